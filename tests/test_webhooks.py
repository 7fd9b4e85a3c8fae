"""Drift webhooks: a drift record written by a request reaches a local receiver once, signed
(HMAC-SHA256 over timestamp and body); a receiver that does not answer never slows the request,
and its failures are counted; the backlog is bounded.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.main import create_app
from app.services import operations
from app.services.recommender import Recommender
from app.services.webhooks import DriftWebhook
from app.store.db import make_engine, make_session_factory
from app.store.drift_records import record_drift
from driftrec_client.webhooks import DELIVERY_HEADER, verify
from tests.conftest import TinyModel, tiny_model_database, tiny_users_data
from training.data.importer import import_movielens

SECRET = "test-webhook-secret"
WEBHOOK_TIMEOUT = 2.0


@dataclass
class Receiver:
    """An HTTP receiver in a thread: answers 204, or (hang) answers nothing for a while."""

    url: str = ""
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    hang: bool = False
    hung: threading.Event = field(default_factory=threading.Event)

    def deliveries(self, prefix: str) -> list[dict[str, Any]]:
        found = []
        for headers, body in self.received:
            record = json.loads(body)["record"]
            if record["change_event_id"].startswith(prefix):
                found.append({"headers": headers, "body": body, "record": record})
        return found


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if state.hang:
                state.hung.set()
                time.sleep(WEBHOOK_TIMEOUT * 1.5)  # past the sender's timeout
                return
            state.received.append((dict(self.headers.items()), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/drift"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@dataclass
class Served:
    client: TestClient
    user: str
    operations: operations.Operations


@pytest.fixture(scope="module")
def served(tiny_model: TinyModel, receiver: Receiver,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("webhooks")
    _, split, subset = tiny_users_data()
    with tiny_model_database(tiny_model, root, "webhooks", drift_webhook_url=receiver.url,
                             drift_webhook_secret=SECRET, drift_webhook_attempts=2,
                             drift_webhook_timeout_seconds=WEBHOOK_TIMEOUT,
                             online_gauge_seconds=0) as (settings, _):
        engine = make_engine(settings.database_url)
        import_movielens(subset, make_session_factory(engine), settings, progress=False)
        engine.dispose()
        with TestClient(create_app(settings)) as client:
            runtime = client.app.state.runtime  # type: ignore[attr-defined]
            ops = runtime.operations  # started by ServingRuntime.start
            ops.webhook.first_wait_seconds = 0.1  # type: ignore[union-attr]
            yield Served(client, split.train[0].user_id, ops)


@pytest.fixture
def drift_writes_a_record(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """GET /drift/{user} also writes a drift record of a fresh change point, in the request's
    own transaction (the tiny model may or may not find one itself)."""
    real = Recommender.check_drift
    written: list[str] = []

    def check_drift(model: Any, session: Session, user_id: str, backfill: bool = False
                    ) -> Any:
        result = real(model, session, user_id, backfill)
        change = f"hook-{len(written)}-{time.monotonic_ns()}"
        record_drift(session, user_id=user_id, change_event_id=change,
                     change_at=datetime(2024, 1, 1, tzinfo=UTC), change_index=3, score=0.9,
                     threshold=0.5, kind="abrupt", model_version="1",
                     interests_before={"Drama": 1.0}, interests_after={"Comedy": 1.0})
        written.append(change)
        return result

    monkeypatch.setattr(Recommender, "check_drift", check_drift)
    yield written


def _sample(served: Served, name: str, **labels: str) -> float:
    registry = served.client.app.state.runtime.metrics.registry  # type: ignore[attr-defined]
    return registry.get_sample_value(name, labels) or 0.0


def _wait_for(condition: Any, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_drift_record_reaches_the_receiver_once_signed(
        served: Served, receiver: Receiver, drift_writes_a_record: list[str]) -> None:
    assert served.client.get(f"/drift/{served.user}").status_code == 200
    change = drift_writes_a_record[0]
    assert _wait_for(lambda: receiver.deliveries(change))
    # a second check of the same change point writes nothing new: nothing is sent again
    time.sleep(1.0)
    [delivery] = receiver.deliveries(change)
    headers, body, record = delivery["headers"], delivery["body"], delivery["record"]
    assert verify(SECRET, headers, body)
    assert not verify("another-secret", headers, body)
    assert not verify(SECRET, headers, body + b" ")
    # a replay long after it was signed is refused
    assert not verify(SECRET, headers, body, now=int(headers["X-DriftRec-Timestamp"]) + 3600)
    assert record["user_id"] == served.user and record["kind"] == "abrupt"
    assert headers[DELIVERY_HEADER] == str(record["id"])
    assert headers["X-DriftRec-Event"] == "drift.detected"
    history = served.client.get("/drift/history", params={"user_id": served.user}).json()
    stored = next(r for r in history["records"] if r["change_event_id"] == change)
    assert stored == record  # the record as the API's history returns it
    assert _sample(served, "driftrec_webhook_deliveries_total", outcome="delivered") >= 1
    assert _sample(served, "driftrec_drift_checks_logged_total") >= 1


def test_a_receiver_that_does_not_answer_never_slows_a_request(
        served: Served, receiver: Receiver, drift_writes_a_record: list[str]) -> None:
    failed_before = _sample(served, "driftrec_webhook_deliveries_total", outcome="failed")
    receiver.hang = True
    try:
        started = time.perf_counter()
        response = served.client.get(f"/drift/{served.user}")
        elapsed = time.perf_counter() - started
        assert response.status_code == 200
        # the sender's first try alone waits WEBHOOK_TIMEOUT for the receiver
        assert receiver.hung.wait(5.0)
        assert elapsed < WEBHOOK_TIMEOUT / 2, elapsed
        # two tries time out: counted as a failure, nothing delivered
        assert _wait_for(lambda: _sample(served, "driftrec_webhook_deliveries_total",
                                         outcome="failed") > failed_before, 20.0)
        assert _sample(served, "driftrec_webhook_retries_total") >= 1
        assert not receiver.deliveries(drift_writes_a_record[0])
    finally:
        receiver.hang = False


class _Counts:
    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {}
        self.depths: list[int] = []

    def outcome(self, outcome: str, count: int = 1) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + count

    def retried(self) -> None:
        pass

    def depth(self, depth: int) -> None:
        self.depths.append(depth)


def test_the_backlog_is_bounded(tmp_path: Any) -> None:
    counts = _Counts()
    engine = make_engine(f"sqlite:///{tmp_path / 'unused.db'}")
    sender = DriftWebhook(make_session_factory(engine), "http://127.0.0.1:9/", SECRET,
                          queue_size=2, observer=counts)  # not started: nothing is taken
    assert sender.submit([1, 2, 3]) == 2
    assert counts.outcomes == {"dropped": 1} and counts.depths[-1] == 2
    sender.stop()
    assert counts.outcomes == {"dropped": 3} and counts.depths[-1] == 0
    engine.dispose()


def test_a_webhook_url_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="SECRET"):
        Settings(drift_webhook_url="http://127.0.0.1:1/hook")
    with pytest.raises(ValueError, match="http"):
        Settings(drift_webhook_url="ftp://x/hook", drift_webhook_secret="s")
