"""Database outage (issue 6, item 2): a real server whose PostgreSQL connection is cut and restored.

The service talks to PostgreSQL through a TCP proxy owned by this test (the machine's shared
cluster is never touched). Cutting the proxy closes every live connection and refuses new
ones, as a crashed or unreachable database would. During the outage writes are 503 with a
retry hint and nothing is half-written, reads that need the database are 503, `/readyz`
fails; once the proxy is back the same process serves again, without a restart.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import scratch_pg_database
from tests.live_server import (
    LiveServer,
    count_rows,
    holding_event_id,
    live_server,
    stored_event_ids,
    wait_for_blocked_insert,
)

SERVICE_PORT = 18310
PROXY_PORT = 18311
GROUP_PORT_OFFSET = 2  # the group-commit server and its proxy: 18312, 18313
UPSTREAM = ("127.0.0.1", 5432)
OUTAGE_ANSWER_SECONDS = 8.0  # connect_timeout (5 s) plus slack: an outage must not hang calls


class CuttableProxy:
    """A TCP forwarder to PostgreSQL that the test can cut (every connection dropped, new ones
    refused) and restore."""

    def __init__(self, port: int, upstream: tuple[str, int]) -> None:
        self.port, self.upstream = port, upstream
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._live: set[socket.socket] = set()
        self._lock = threading.Lock()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)  # lets the accept loop notice a cut
        self._listener = listener
        self._stopping.clear()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def cut(self) -> None:
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join()
        if self._listener is not None:
            self._listener.close()  # new connections are refused from here on
        with self._lock:
            live, self._live = self._live, set()
        for sock in live:
            _drop(sock)

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _drop(client)
                continue
            for sock in (client, server):
                sock.settimeout(None)
            with self._lock:
                self._live.update((client, server))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):  # the other side went away, or the test cut it
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            with self._lock:
                self._live.discard(sock)
            _drop(sock)


def _drop(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture(scope="module", params=[False, True], ids=["per-request", "group-commit"])
def outage(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           empty_registry: str) -> Iterator[tuple[LiveServer, CuttableProxy, str]]:
    """A live server behind the proxy, committing each request's batch alone or the batches
    of concurrent requests together (DRIFTREC_EVENT_GROUP_COMMIT)."""
    workdir = Path(tmp_path_factory.mktemp("outage"))
    offset = GROUP_PORT_OFFSET if request.param else 0
    with scratch_pg_database("outage") as direct_url:
        proxy = CuttableProxy(PROXY_PORT + offset, UPSTREAM)
        proxy.restore()
        proxied_url = direct_url.replace("127.0.0.1:5432",
                                         f"127.0.0.1:{PROXY_PORT + offset}")
        assert proxied_url != direct_url
        try:
            with live_server(SERVICE_PORT + offset, proxied_url, empty_registry, workdir,
                             event_group_commit=str(request.param).lower()) as live:
                items = [{"item_id": f"i{i}", "title": f"Item {i}"} for i in range(10)]
                assert httpx.post(f"{live.base_url}/items", json={"items": items}
                                  ).status_code == 200
                yield live, proxy, direct_url
        finally:
            proxy.cut()


def _events(prefix: str, count: int, user: str = "u1") -> dict[str, Any]:
    return {"events": [{"event_id": f"{prefix}-{n}", "user_id": user, "item_id": f"i{n % 10}",
                        "type": "view", "timestamp": 1_700_000_000 + n} for n in range(count)]}


def _timed(call: Any) -> httpx.Response:
    started = time.monotonic()
    response = call()
    elapsed = time.monotonic() - started
    assert elapsed < OUTAGE_ANSWER_SECONDS, f"{response.request.url} took {elapsed:.1f} s"
    return response


def _assert_database_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, (response.request.url, response.text)
    assert response.headers["retry-after"].isdigit()
    body = response.json()
    assert body["error"] == "database_unavailable" and "retry" in body["message"]


def _database_check(live: LiveServer) -> str:
    return httpx.get(f"{live.base_url}/readyz", timeout=10).json()["checks"]["database"]


def _wait_for_database(live: LiveServer, timeout: float = 15.0) -> float:
    started = time.monotonic()
    while _database_check(live) != "ok":
        assert time.monotonic() - started < timeout, "the service did not recover on its own"
        time.sleep(0.1)
    return time.monotonic() - started


def test_outage_is_503_everywhere_and_the_service_recovers_without_restart(
        outage: tuple[LiveServer, CuttableProxy, str]) -> None:
    live, proxy, url = outage
    http = httpx.Client(base_url=live.base_url, timeout=30)
    assert http.post("/events", json=_events("before", 20)).json()["accepted"] == 20
    assert http.get("/users/u1/events").status_code == 200  # the pool holds live connections
    assert _database_check(live) == "ok"
    pid = live.process.pid

    proxy.cut()
    try:
        _assert_database_unavailable(_timed(lambda: http.post("/events",
                                                              json=_events("during", 50))))
        _assert_database_unavailable(_timed(lambda: http.post(
            "/items", json={"items": [{"item_id": "new", "title": "New"}]})))
        for path in ("/users/u1/events", "/items/i1", "/drift/history", "/drift/summary"):
            _assert_database_unavailable(_timed(lambda path=path: http.get(path)))
        ready = _timed(lambda: http.get("/readyz"))
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"].startswith("unavailable")
        assert http.get("/healthz").status_code == 200  # the process itself is fine
    finally:
        proxy.restore()

    recovery = _wait_for_database(live)
    assert live.process.pid == pid and live.process.poll() is None  # same process, no restart
    # The batch refused during the outage was not half-written: none of it is there.
    assert stored_event_ids(url, "during-") == set()
    retried = http.post("/events", json=_events("during", 50))
    assert retried.status_code == 200 and retried.json() == {"accepted": 50, "duplicates": 0}
    assert http.post("/items", json={"items": [{"item_id": "new", "title": "New"}]}
                     ).status_code == 200
    assert len(http.get("/users/u1/events", params={"limit": 1000}).json()["events"]) == 70
    assert http.get("/drift/history").status_code == 200
    assert recovery < 5.0


def test_connection_cut_in_the_middle_of_a_batch_write_commits_nothing(
        outage: tuple[LiveServer, CuttableProxy, str]) -> None:
    live, proxy, url = outage
    http = httpx.Client(base_url=live.base_url, timeout=60)
    assert http.post("/events", json=_events("seed", 1, user="u2")).status_code == 200
    batch = _events("cut", 5_000, user="u2")
    answer: list[httpx.Response] = []
    # The batch's INSERT waits on a row this test holds, so the cut lands inside the write.
    with holding_event_id(url, "cut-4999", "u2", "i1"):
        poster = threading.Thread(target=lambda: answer.append(http.post("/events", json=batch)))
        poster.start()
        wait_for_blocked_insert(url)
        proxy.cut()
        poster.join(timeout=OUTAGE_ANSWER_SECONDS)
        assert not poster.is_alive(), "the request hung on the cut connection"
    proxy.restore()
    [response] = answer
    _assert_database_unavailable(response)  # not acknowledged ...
    _wait_for_database(live)
    assert stored_event_ids(url, "cut-") == set()  # ... and not one row of it stored
    retried = http.post("/events", json=batch)
    assert retried.json() == {"accepted": 5_000, "duplicates": 0}
    assert count_rows(url, "SELECT count(*) FROM events WHERE user_id = 'u2'") == 5_001


def test_a_stuck_statement_is_cancelled_by_the_server(pg_database: str) -> None:
    """The service's engine carries a statement timeout: a query that hangs (a lock held by
    someone else, a runaway plan) fails and frees its request instead of holding it."""
    import sqlalchemy.exc
    from sqlalchemy import text

    from app.store.db import make_engine

    engine = make_engine(pg_database, statement_timeout_ms=200)
    try:
        started = time.monotonic()
        with pytest.raises(sqlalchemy.exc.OperationalError, match="statement timeout"), \
                engine.connect() as connection:
            connection.execute(text("SELECT pg_sleep(5)"))
        assert time.monotonic() - started < 3
    finally:
        engine.dispose()
