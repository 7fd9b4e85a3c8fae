"""Defects the outsider probe found in drift checking (issue 12, points 1, 2 and 6), on both
backends, with a stand-in model whose change point is known: the first event on a "b" item.

1. A history holding items the model does not know: the change point, its index and the
   before/after split name the right event of the full history, and two workers that know
   different items write one record for one change.
2. A "ghost" user (a user row without events) is never created by an all-duplicate batch,
   answers 404 everywhere, and the drift scan skips and counts it instead of stopping.
6. Repeated live checks of unchanged events log one drift check, not one per request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.domain.drift import ChangePoint
from app.ml.bundle import DriftSettings
from app.ml.parts import EventTrace
from app.schemas.events import EventIn
from app.services import ingestion
from app.services.drift_scan import scan_users
from app.services.recommender import Recommender
from app.services.served_model import ServedModel
from app.store import repository
from app.store.db import transaction
from app.store.models import DriftCheck, DriftRecord, User

START = datetime(2026, 3, 1, tzinfo=UTC)
TOPICS = ["A", "B"]


@dataclass
class _Topics:
    names: list[str] = field(default_factory=lambda: list(TOPICS))


@dataclass
class _Bundle:
    """What check_drift reads of a bundle: items starting with "b" are topic B, others A;
    only `known` items are in the catalogue (the rest are skipped, as encode_histories does)."""

    known: set[str]
    drift: DriftSettings = field(default_factory=lambda: DriftSettings(
        threshold=0.5, min_events=3, max_events=200))
    topics: _Topics = field(default_factory=_Topics)

    def index_of(self, item_id: str) -> int | None:
        return sorted(self.known).index(item_id) + 1 if item_id in self.known else None

    def item_topic(self, item_id: str) -> int | None:
        return None if item_id not in self.known else int(item_id.startswith("b"))

    # No incremental engine for this stand-in (app.ml.incremental.supports): the served
    # path replays the window's known items through drift_traces_batch.
    sequence_model = None
    drift_detector = None

    def drift_traces_batch(self, histories: Sequence[Sequence[str]],
                           timestamps: Sequence[Sequence[float]]
                           ) -> list[tuple[np.ndarray, np.ndarray]]:
        """The head alarms (0.9) at the first "b" item once min_events are seen; the
        histories hold known items only, as the served path passes them."""
        traces = []
        for items in histories:
            probs = np.zeros(len(items))
            for j, item_id in enumerate(items):
                if item_id.startswith("b") and j >= self.drift.min_events - 1:
                    probs[j] = 0.9
                    break
            traces.append((probs, np.zeros(len(items))))
        return traces

    def drift_event_traces(self, histories: Sequence[Sequence[str]],
                           timestamps: Sequence[Sequence[float]]) -> list[EventTrace]:
        return [EventTrace(p, s) for p, s in self.drift_traces_batch(histories, timestamps)]

    def decide(self, trace: EventTrace) -> ChangePoint | None:
        alarms = np.flatnonzero(trace.probabilities >= self.drift.threshold)
        return None if not len(alarms) else ChangePoint(int(alarms[0]), 0.9, "abrupt")


def _Model(bundle: _Bundle, version: str = "1") -> Recommender:
    """The served-version object over the stand-in bundle: the path every check serves."""
    return Recommender(ServedModel(bundle=bundle, name="m", version=version,  # type: ignore[arg-type]
                                   alias="champion", run_id=None, device="cpu",
                                   loaded_at=datetime.now(UTC)))


A_ITEMS = [f"a{i}" for i in range(6)]
B_ITEMS = [f"b{i}" for i in range(6)]
KNOWN = set(A_ITEMS + B_ITEMS)
# (case, the user's items in time order): "x*" items are unknown to the model
HISTORIES = {
    "unknown at the start": ["x0", "x1", *A_ITEMS, *B_ITEMS],
    "unknown in the middle": [*A_ITEMS[:3], "x0", *A_ITEMS[3:], "x1", *B_ITEMS],
    "unknown at the end": [*A_ITEMS, *B_ITEMS, "x0", "x1"],
    "unknown everywhere": ["x0", *A_ITEMS[:2], "x1", *A_ITEMS[2:], *B_ITEMS[:2], "x2",
                           *B_ITEMS[2:], "x3"],
}


def _store(factory: sessionmaker[Session], user_id: str, items: list[str]) -> list[str]:
    """The user's events, one hour apart; returns their event ids in time order."""
    rows = [{"event_id": f"{user_id}-e{n}", "user_id": user_id, "item_id": item,
             "type": "view", "value": None, "text": None,
             "occurred_at": START + timedelta(hours=n), "context": {},
             "ingested_at": datetime.now(UTC)} for n, item in enumerate(items)]
    with transaction(factory) as session:
        repository.upsert_items(session, [{"item_id": i, "title": i, "text": None,
                                           "categories": [], "attributes": {}}
                                          for i in sorted(set(items))])
        repository.ensure_users(session, [user_id])
        repository.insert_events(session, rows)
    return [row["event_id"] for row in rows]


def _check(factory: sessionmaker[Session], model: Recommender, user_id: str
           ) -> dict[str, Any]:
    with transaction(factory) as session:
        return model.check_drift(session, user_id).model_dump()


@pytest.mark.parametrize("case", list(HISTORIES))
def test_change_point_names_the_event_of_the_full_history(
        factory: sessionmaker[Session], case: str) -> None:
    items = HISTORIES[case]
    event_ids = _store(factory, "u1", items)
    body = _check(factory, _Model(_Bundle(KNOWN)), "u1")
    position = items.index("b0")
    assert body["drift_detected"]
    assert body["change_point"]["event_id"] == event_ids[position], case
    assert body["change_point"]["index"] == position
    assert body["change_point"]["timestamp"] == START + timedelta(hours=position)
    # everything before the change is topic A, everything after topic B
    assert body["from_interests"][0] == {"topic": "A", "weight": pytest.approx(1.0)}
    assert body["to_interests"][0] == {"topic": "B", "weight": pytest.approx(1.0)}
    with factory() as session:
        [record] = session.scalars(select(DriftRecord)).all()
        assert (record.change_event_id, record.change_index) == (event_ids[position], position)
        assert record.interests_before == {"A": pytest.approx(1.0)}
        assert record.change_at == START + timedelta(hours=position)


def test_workers_knowing_different_items_record_one_change(
        factory: sessionmaker[Session]) -> None:
    # Worker 2 has "x0" (a cold-start item it added); worker 1 does not know it yet.
    items = [*A_ITEMS[:3], "x0", *A_ITEMS[3:], *B_ITEMS]
    event_ids = _store(factory, "u1", items)
    first = _check(factory, _Model(_Bundle(KNOWN)), "u1")
    second = _check(factory, _Model(_Bundle(KNOWN | {"x0"})), "u1")
    assert first["change_point"] == second["change_point"]
    assert first["change_point"]["event_id"] == event_ids[items.index("b0")]
    assert first["record_id"] == second["record_id"]
    with factory() as session:
        assert repository.count_rows(session, DriftRecord) == 1


# ------------------------------------------------------------------------- ghost users
def _event(event_id: str, user_id: str, item_id: str = "a0") -> EventIn:
    return EventIn.model_validate({"event_id": event_id, "user_id": user_id,
                                   "item_id": item_id, "type": "view",
                                   "timestamp": START.isoformat()})


def test_an_all_duplicate_batch_creates_no_user(factory: sessionmaker[Session],
                                                settings: Settings) -> None:
    _store(factory, "u1", ["a0"])
    with transaction(factory) as session:
        users_before = repository.count_rows(session, User)
        result = ingestion.ingest_events(session, [_event("u1-e0", "ghost")], settings)
    assert (result.accepted, result.duplicates, result.user_ids) == (0, 1, [])
    with transaction(factory) as session:
        assert repository.count_rows(session, User) == users_before
        assert session.get(User, "ghost") is None
        # one new and one duplicate row for a new user: the user is created (it has an event)
        result = ingestion.ingest_events(
            session, [_event("u1-e0", "newcomer"), _event("n-1", "newcomer")], settings)
    assert (result.accepted, result.duplicates, result.user_ids) == (1, 1, ["newcomer"])
    with factory() as session:
        assert session.get(User, "newcomer") is not None


def test_the_drift_scan_skips_and_counts_users_without_events(
        factory: sessionmaker[Session]) -> None:
    _store(factory, "u1", [*A_ITEMS, *B_ITEMS])
    # the factory fixture's users u2 and u3 have no events: ghosts, as an older release left
    report = scan_users(factory, _Model(_Bundle(KNOWN)), ["u1", "u2", "u3"], backfill=True)
    assert (report.users, report.drifts, report.skipped) == (1, 1, 2)


def test_a_ghost_user_is_404_on_every_endpoint(client: TestClient,
                                               factory: sessionmaker[Session]) -> None:
    client.post("/items", json={"items": [{"item_id": "a0", "title": "A"}]})
    assert client.post("/events", json={"events": [
        {"event_id": "e1", "user_id": "u1", "item_id": "a0", "type": "view",
         "timestamp": 1_700_000_000}]}).json()["accepted"] == 1
    again = client.post("/events", params={"detect_drift": "true"}, json={"events": [
        {"event_id": "e1", "user_id": "ghost", "item_id": "a0", "type": "view",
         "timestamp": 1_700_000_000}]})
    # nothing stored, so no user created and no check queued (the id names u1's event)
    assert again.json() == {"accepted": 0, "duplicates": 1, "drift_checks_queued": 0,
                            "conflicts": [{"row": 0, "event_id": "e1"}]}
    # the factory fixture left user rows without events (u2): the same 404 as for "ghost"
    for user_id in ("ghost", "u2"):
        response = client.get(f"/users/{user_id}/events")
        assert response.status_code == 404, response.text
        assert response.json()["error"] == "not_found"


# ------------------------------------------------------------------- logged checks
def test_repeated_checks_of_unchanged_events_are_logged_once(
        factory: sessionmaker[Session]) -> None:
    _store(factory, "u1", [*A_ITEMS, *B_ITEMS])
    model = _Model(_Bundle(KNOWN))
    for _ in range(20):
        _check(factory, model, "u1")
    with factory() as session:
        assert repository.count_rows(session, DriftCheck) == 1
    with transaction(factory) as session:  # a new event: the next check is logged again
        repository.insert_events(session, [{
            "event_id": "u1-new", "user_id": "u1", "item_id": "b0", "type": "view",
            "value": None, "text": None, "occurred_at": START + timedelta(days=3),
            "context": {}, "ingested_at": datetime.now(UTC)}])
    _check(factory, model, "u1")
    _check(factory, model, "u1")
    _check(factory, _Model(_Bundle(KNOWN), version="2"), "u1")  # another model version
    with factory() as session:
        assert repository.count_rows(session, DriftCheck) == 3
