"""`DRIFTREC_INTEREST_STATE_ON_INGEST`: after events are stored, a background queue brings the
users' drift states up to their latest event, so the next read finds them current."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.store.db import make_engine, make_session_factory
from tests.conftest import TinyModel, tiny_model_database, tiny_users_data
from training.data.importer import import_movielens


def test_new_events_bring_the_state_forward_in_the_background(
        tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> None:
    root: Path = tmp_path_factory.mktemp("state-on-ingest")
    _, split, subset = tiny_users_data()
    user = split.train[0].user_id
    with tiny_model_database(tiny_model, root, "state_on_ingest",
                             interest_state_on_ingest=True) as (settings, _):
        engine = make_engine(settings.database_url)
        import_movielens(subset, make_session_factory(engine), settings, progress=False)
        engine.dispose()
        with TestClient(create_app(settings)) as client:
            runtime: Any = client.app.state.runtime  # type: ignore[attr-defined]
            total = client.get(f"/users/{user}/events", params={"limit": 1000}).json()
            count = len(total["events"])
            event = {"event_id": "on-ingest-1", "user_id": user, "item_id": "1",
                     "type": "view", "timestamp": time.time() - 30}
            assert client.post("/events", json={"events": [event]}).json()["accepted"] == 1
            runtime.state_queue.join()
            state = runtime.models.current.interest_states.get(user)
            assert state is not None and state.total == count + 1
