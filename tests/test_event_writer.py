"""Group commits of events (DRIFTREC_EVENT_GROUP_COMMIT): batches queued together share one
transaction, each is acknowledged only after it commits, and no batch fails for another."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.core.exceptions import BatchRejected
from app.main import create_app
from app.schemas.events import EventIn
from app.services import ingestion
from app.services.event_intake import EventWriter
from app.store import db, repository
from app.store.db import transaction

START = datetime(2024, 1, 1, tzinfo=UTC)


def _batch(prefix: str, n: int = 2, user: str = "g1", item: str = "i1") -> list[EventIn]:
    return [EventIn(event_id=f"{prefix}-{k}", user_id=user, item_id=item, type="view",
                    timestamp=START + timedelta(minutes=k)) for k in range(n)]


def _stored(factory: sessionmaker[Session], prefix: str) -> int:
    with factory() as session:
        return int(session.execute(text("SELECT count(*) FROM events WHERE event_id LIKE :p"),
                                   {"p": f"{prefix}-%"}).scalar_one())


@pytest.fixture
def writer(factory: sessionmaker[Session], settings: Settings) -> Iterator[EventWriter]:
    with transaction(factory) as session:
        repository.upsert_items(session, [{"item_id": f"i{n}", "title": f"I{n}", "text": None,
                                           "categories": [], "attributes": {}}
                                          for n in range(3)])
    writer = EventWriter(factory, settings)
    yield writer
    writer.stop()


def _commits(factory: sessionmaker[Session]) -> list[int]:
    commits: list[int] = []
    event.listen(factory.kw["bind"], "commit", lambda _connection: commits.append(1))
    return commits


def test_batches_queued_together_commit_once_and_each_gets_its_own_answer(
        writer: EventWriter, factory: sessionmaker[Session]) -> None:
    commits = _commits(factory)
    # queued before the thread starts: all taken as one group
    futures = [writer.submit(_batch("a")), writer.submit(_batch("b", user="g2")),
               writer.submit(_batch("a")),  # a retry of the first: duplicates
               writer.submit([*_batch("c", 1), *_batch("a", 1)])]
    writer.start()
    results = [f.result(timeout=30) for f in futures]
    assert [(r.accepted, r.duplicates) for r in results] == [(2, 0), (2, 0), (0, 2), (1, 1)]
    assert results[1].user_ids == ["g2"] and results[2].user_ids == []
    assert len(commits) == 1
    assert _stored(factory, "a") == 2 and _stored(factory, "c") == 1


def test_a_rejected_batch_fails_alone_and_writes_nothing(
        writer: EventWriter, factory: sessionmaker[Session]) -> None:
    good, bad = writer.submit(_batch("good")), writer.submit(_batch("bad", user="new", item="x"))
    writer.start()
    assert good.result(timeout=30).accepted == 2
    with pytest.raises(BatchRejected):
        bad.result(timeout=30)
    assert _stored(factory, "bad") == 0
    with factory() as session:  # no user without events was left behind
        assert not repository.user_has_events(session, "new")
        assert session.execute(text("SELECT count(*) FROM users WHERE user_id = 'new'")
                               ).scalar_one() == 0


def test_a_failing_batch_is_written_alone_and_the_others_are_stored(
        writer: EventWriter, factory: sessionmaker[Session],
        monkeypatch: pytest.MonkeyPatch) -> None:
    ingest = ingestion.ingest_events

    def failing(session: Session, events: Any, settings: Settings) -> Any:
        result = ingest(session, events, settings)  # written, then the transaction fails
        if events[0].event_id.startswith("poison"):
            raise OperationalError("INSERT", {}, Exception("connection lost"))
        return result

    monkeypatch.setattr(ingestion, "ingest_events", failing)
    futures = [writer.submit(_batch("x")), writer.submit(_batch("poison")),
               writer.submit(_batch("y"))]
    writer.start()
    assert futures[0].result(timeout=30).accepted == 2
    with pytest.raises(OperationalError):
        futures[1].result(timeout=30)
    assert futures[2].result(timeout=30).accepted == 2
    assert (_stored(factory, "x"), _stored(factory, "poison"), _stored(factory, "y")) == (2, 0, 2)


def test_an_answer_comes_only_after_the_commit(
        writer: EventWriter, factory: sessionmaker[Session]) -> None:
    seen: list[int] = []
    checked = threading.Event()

    def check_at_answer(future: Future[Any]) -> None:
        seen.append(_stored(factory, "d"))  # another connection: committed rows only
        checked.set()

    future = writer.submit(_batch("d", 3))
    future.add_done_callback(check_at_answer)  # runs in the writer, as the answer is given
    writer.start()
    assert checked.wait(timeout=30)
    assert seen == [3]


def test_stop_writes_what_is_queued_and_refuses_later_batches(
        writer: EventWriter, factory: sessionmaker[Session]) -> None:
    queued = writer.submit(_batch("q"))
    writer.start()
    writer.stop()
    assert queued.done() and queued.result().accepted == 2
    with pytest.raises(RuntimeError, match="stopped"):
        writer.submit(_batch("late"))


def test_concurrent_requests_share_transactions_through_the_api(settings: Settings) -> None:
    grouped = settings.model_copy(update={"event_group_commit": True})
    with TestClient(create_app(grouped)) as client:
        items = [{"item_id": f"i{n}", "title": f"I{n}"} for n in range(3)]
        assert client.post("/items", json={"items": items}).status_code == 200
        answers: list[Any] = []

        def post(n: int) -> None:
            body = {"events": [{"event_id": f"p{n}", "user_id": f"u{n % 3}", "item_id": "i1",
                                "type": "view", "timestamp": "2024-01-01T00:00:00Z"}]}
            answers.append(client.post("/events", json=body))

        threads = [threading.Thread(target=post, args=(n,)) for n in range(24)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [a.status_code for a in answers] == [200] * 24
        assert all(a.json() == {"accepted": 1, "duplicates": 0} for a in answers)
        bad = client.post("/events", json={"events": [{"user_id": "u1", "item_id": "nope",
                                                       "type": "view", "timestamp": 1}]})
        assert bad.status_code == 422 and "item_id" in bad.text
        assert len(client.get("/users/u1/events").json()["events"]) == 8


def test_a_group_failing_while_the_database_is_away_fails_at_once(
        writer: EventWriter, factory: sessionmaker[Session],
        monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[str] = []

    def unreachable(session: Session, events: Any, settings: Settings) -> Any:
        attempts.append(events[0].event_id)
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(ingestion, "ingest_events", unreachable)
    monkeypatch.setattr(db, "reachable", lambda _factory: False)
    futures = [writer.submit(_batch(prefix)) for prefix in ("m", "n", "o")]
    writer.start()
    for future in futures:
        with pytest.raises(OperationalError):
            future.result(timeout=30)
    assert attempts == ["m-0"]  # the group's first batch; nothing retried one by one
