"""Promotion is a compare-and-set across workers: two `POST /models/promote-challenger` calls
at once, one per worker (each its own ModelManager over the same registry and database, as two
processes have), end with exactly one promotion and one refusal (409 `no_challenger`), on
PostgreSQL (an advisory lock) and SQLite (the write lock). The promotion reports the champion
the registry had, not the one a worker that has not polled yet still serves."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from app.core.config import Settings
from app.services import model_manager
from app.services.model_manager import ModelManager, NoChallenger, Promotion
from app.store.db import make_engine, make_session_factory


@dataclass
class Registry:
    settings: Settings
    client: MlflowClient

    def alias(self, alias: str) -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(self.settings.model_name,
                                                              alias).version)
        except MlflowException:
            return None


@pytest.fixture
def registry(settings: Settings) -> Registry:
    """A model of this test's own in the shared MLflow store: v1 champion, v2 challenger, v3
    (the versions are never loaded here, so they need no files)."""
    name = f"promotion-{uuid.uuid4().hex[:8]}"
    ours = settings.model_copy(update={"model_name": name, "challenger_share": 0.5})
    client = MlflowClient(tracking_uri=ours.mlflow_tracking_uri,
                          registry_uri=ours.mlflow_tracking_uri)
    client.create_registered_model(name)
    for _ in range(3):
        client.create_model_version(name, source=str(ours.model_download_dir), run_id=None)
    client.set_registered_model_alias(name, "champion", "1")
    client.set_registered_model_alias(name, "challenger", "2")
    return Registry(ours, client)


@pytest.fixture
def workers(registry: Registry) -> Iterator[list[ModelManager]]:
    """Two workers' model managers, each with its own engine, both serving v1 as champion and
    v2 as challenger (stand-ins: promotion only reads what a served version is called)."""
    engines = [make_engine(registry.settings.database_url) for _ in range(2)]
    managers = []
    for engine in engines:
        manager = ModelManager(registry.settings, make_session_factory(engine),
                               with_challenger=True)
        manager.champion.served = _served("1")
        assert manager.challenger is not None
        manager.challenger.served = _served("2")
        managers.append(manager)
    yield managers
    for engine in engines:
        engine.dispose()


def _served(version: str) -> Any:
    return SimpleNamespace(version=version, name="promotion", device="cpu")


def test_concurrent_promotions_on_two_workers_one_wins_one_is_refused(
        registry: Registry, workers: list[ModelManager],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a registry that takes a moment to move an alias (a remote MLflow): without a
    # compare-and-set both workers read the challenger alias before either moves it
    moving = model_manager.move_alias

    def slow_move(*args: Any, **kwargs: Any) -> None:
        threading.Event().wait(0.3)
        moving(*args, **kwargs)

    monkeypatch.setattr(model_manager, "move_alias", slow_move)
    start = threading.Barrier(len(workers))
    outcomes: list[Promotion | Exception | None] = [None] * len(workers)

    def promote(n: int) -> None:
        start.wait(timeout=10)
        try:
            outcomes[n] = workers[n].promote_challenger()
        except Exception as error:  # collected: the assertions below say which
            outcomes[n] = error

    threads = [threading.Thread(target=promote, args=(n,)) for n in range(len(workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    promoted = [o for o in outcomes if isinstance(o, Promotion)]
    refused = [o for o in outcomes if isinstance(o, NoChallenger)]
    assert len(promoted) == 1 and len(refused) == 1, outcomes
    assert promoted[0] == Promotion("2", "1")  # the champion the registry had
    assert registry.alias("champion") == "2" and registry.alias("challenger") is None
    winner = workers[outcomes.index(promoted[0])]
    assert winner.current.version == "2" and winner.serving_challenger is None


def test_the_previous_champion_is_the_registrys_not_a_lagging_workers(
        registry: Registry, workers: list[ModelManager]) -> None:
    # someone moved the champion to v3; this worker has not polled and still serves v1
    registry.client.set_registered_model_alias(registry.settings.model_name, "champion", "3")
    promotion = workers[0].promote_challenger()
    assert promotion == Promotion("2", "3")
    assert registry.alias("champion") == "2" and registry.alias("challenger") is None
    # the other worker, still serving v2 as challenger, finds it promoted already
    with pytest.raises(NoChallenger):
        workers[1].promote_challenger()
    assert registry.alias("champion") == "2"
