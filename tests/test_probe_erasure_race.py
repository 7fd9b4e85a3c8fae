"""A drift check racing `DELETE /users/{id}`: the check read the user's events, then the user
was erased before the check wrote its record and log row. The answer is a 404 (the user is
gone), never a 500, and the service log carries neither the erased id nor the database's
error detail that names it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.services.recommender import Recommender
from app.store.db import make_engine, make_session_factory
from tests.conftest import TinyModel, tiny_model_database, tiny_users_data
from training.data.importer import import_movielens


@pytest.fixture(scope="module")
def client(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[TestClient, list[str]]]:
    root: Path = tmp_path_factory.mktemp("erasure-race")
    _, split, subset = tiny_users_data()
    with tiny_model_database(tiny_model, root, "erasure_race") as (settings, _):
        engine = make_engine(settings.database_url)
        import_movielens(subset, make_session_factory(engine), settings, progress=False)
        engine.dispose()
        with TestClient(create_app(settings)) as served:
            yield served, [seq.user_id for seq in split.train]


def test_a_drift_check_racing_an_erasure_is_a_404_and_logs_no_id(
        client: tuple[TestClient, list[str]], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    served, users = client
    runtime: Any = served.app.state.runtime  # type: ignore[attr-defined]
    real = Recommender.cached_drift
    erased: list[str] = []

    def erase_then_find(model: Recommender, user_id: str, history: Any) -> Any:
        # another request erases the user between this check's read and its writes
        assert runtime.erasure.erase(user_id) is not None
        erased.append(user_id)
        return real(model, user_id, history)

    monkeypatch.setattr(Recommender, "cached_drift", erase_then_find)
    caplog.set_level(logging.DEBUG)
    for user in users[:3]:
        response = served.get(f"/drift/{user}")
        assert response.status_code == 404, response.text
        assert response.json()["error"] == "not_found"
    assert erased == users[:3]
    logged = caplog.text + "".join(capsys.readouterr())
    for user in erased:
        assert f"'{user}'" not in logged and f"({user})" not in logged
        assert f"user {user}" not in logged
    assert "Key (user_id)" not in logged and "[parameters:" not in logged
