"""An erasure answers once the other workers have heard of it: on PostgreSQL the erasing
worker waits (at most a second) until its own change listener has received the erasure's
NOTIFY, which every worker's listener receives at the same moment. Before, it answered at
commit, and for the few milliseconds the notification took another worker still served the
user's remembered rankings. Here two app instances (two workers' runtimes, each with its
listener) share one database, and delivery is slowed on both so that the gap is plain to see."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.main import create_app
from app.services.change_feed import ChangeFeed
from app.services.user_erasure import UserErasure
from app.store.changes import ERASED_PREFIX, parse_erased_payload
from app.store.db import make_engine, make_session_factory, transaction
from app.store.repository import ensure_users

DELIVERY_DELAY = 0.5  # each listener hands a notification on this long after it arrived


@dataclass
class Worker:
    http: TestClient
    heard: dict[str, float] = field(default_factory=dict)  # user -> when its NOTIFY was applied


@pytest.fixture
def workers(pg_database: str, tmp_path: Path, empty_registry: str) -> Iterator[list[Worker]]:
    """Two app instances (two workers' runtimes: feed, listener) on one PostgreSQL database,
    no model needed; each listener slow to hand notifications on (a busy worker)."""
    settings = Settings(database_url=pg_database, data_cache_dir=tmp_path / "cache",
                        mlflow_tracking_uri=empty_registry,
                        mlflow_artifact_root=str(tmp_path / "artifacts"), model_poll_seconds=0)
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        started = [_slowed(Worker(a)), _slowed(Worker(b))]
        deadline = time.monotonic() + 10
        while not all(_feed(w).live for w in started):
            assert time.monotonic() < deadline, "the change listeners did not connect"
            time.sleep(0.01)
        yield started


def _feed(worker: Worker) -> ChangeFeed:
    runtime: Any = worker.http.app.state.runtime  # type: ignore[attr-defined]
    feed: ChangeFeed = runtime.change_feed
    return feed


def _slowed(worker: Worker) -> Worker:
    feed = _feed(worker)
    apply = feed.apply  # only the listener calls it

    def slow_apply(payload: str) -> None:  # a listener thread slow to get the CPU
        time.sleep(DELIVERY_DELAY)
        apply(payload)
        if payload.startswith(ERASED_PREFIX):
            for user in parse_erased_payload(payload):
                worker.heard.setdefault(user, time.monotonic())

    feed.apply = slow_apply  # type: ignore[method-assign]
    return worker


def test_an_erasure_answers_once_every_worker_has_heard_of_it(
        pg_database: str, workers: list[Worker]) -> None:
    engine = make_engine(pg_database)
    with transaction(make_session_factory(engine)) as session:
        ensure_users(session, ["notice-user"])
    engine.dispose()
    first, second = workers
    erased = first.http.delete("/users/notice-user")
    answered = time.monotonic()
    assert erased.status_code == 200, erased.text
    # the erasing worker's own listener had the NOTIFY before the answer...
    assert first.heard.get("notice-user", answered + 1) <= answered
    # ...and so, give or take scheduling, had the other worker's (before: ~0.5 s later)
    deadline = answered + 2 * DELIVERY_DELAY
    while "notice-user" not in second.heard and time.monotonic() < deadline:
        time.sleep(0.005)
    assert second.heard["notice-user"] - answered < DELIVERY_DELAY / 2


def _erasure(factory: sessionmaker[Session], feed: ChangeFeed, wait: float) -> UserErasure:
    return UserErasure(factory, Settings(), lambda users: None, feed,
                       notice_wait_seconds=wait)


def test_the_wait_is_bounded_and_skipped_without_a_listener(pg_database: str) -> None:
    engine = make_engine(pg_database)
    factory = make_session_factory(engine)
    with transaction(factory) as session:
        ensure_users(session, ["deaf-1", "deaf-2"])
    # a feed that is live but hears nothing (its notification lost): answered at the bound
    deaf = ChangeFeed()
    deaf.set_live(True)
    started = time.monotonic()
    assert _erasure(factory, deaf, 0.3).erase("deaf-1") is not None
    assert 0.3 <= time.monotonic() - started < 2.0
    # a feed that is not live (a listener still connecting): nothing to wait for
    deaf.set_live(False)
    started = time.monotonic()
    assert _erasure(factory, deaf, 5.0).erase("deaf-2") is not None
    assert _erasure(factory, deaf, 5.0).erase("nobody") is None  # no such user: no wait
    assert time.monotonic() - started < 2.0
    engine.dispose()


def test_a_lost_listener_releases_the_waiting_erasure() -> None:
    feed = ChangeFeed()
    feed.set_live(True)
    with feed.awaiting_erasure(["u"]) as notice:
        assert notice is not None and not notice.is_set()
        threading.Timer(0.05, feed.set_live, args=(False,)).start()
        assert notice.wait(2.0)
    with feed.awaiting_erasure(["u"]) as notice:
        assert notice is None  # not live: nobody would hear it
