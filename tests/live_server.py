"""A real service process for the reliability tests: `python -m app serve` in a subprocess.

The concurrency, outage and shutdown tests need what an in-process TestClient cannot give:
real sockets, uvicorn's own signal handling and a connection pool that outlives requests.
Ports come from the range reserved for these tests (18300-18399).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

from app.core.config import PROJECT_ROOT

START_TIMEOUT_SECONDS = 120.0  # imports torch and MLflow: slow on a busy 2-core machine


@dataclass
class LiveServer:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the graceful shutdown; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"server did not stop within {timeout} s after SIGTERM:\n"
                                 f"{self.log_text()[-3000:]}") from None


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(ports: range) -> int:
    """The first free port of a test module's own range (modules never share one)."""
    for port in ports:
        if port_is_free(port):
            return port
    raise RuntimeError(f"no free port in {ports}")


def server_env(database_url: str, registry_uri: str, workdir: Path,
               **extra: str) -> dict[str, str]:
    """The parent's environment without its DRIFTREC_* settings, plus the service's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTREC_")}
    env.update({
        "DRIFTREC_DATABASE_URL": database_url,
        "DRIFTREC_MLFLOW_TRACKING_URI": registry_uri,
        "DRIFTREC_MLFLOW_ARTIFACT_ROOT": str(workdir / "artifacts"),
        "DRIFTREC_DATA_CACHE_DIR": str(workdir / "cache"),
        "DRIFTREC_MODEL_POLL_SECONDS": "0",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    })
    env.update({f"DRIFTREC_{key.upper()}": value for key, value in extra.items()})
    return env


@contextlib.contextmanager
def live_server(port: int, database_url: str, registry_uri: str, workdir: Path,
                workers: int = 1, **settings: str) -> Iterator[LiveServer]:
    """Start the service on 127.0.0.1:`port` (`workers` processes), wait for /healthz, stop
    it afterwards."""
    assert port_is_free(port), f"port {port} is taken: a server of an earlier run still up?"
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--port", str(port),
             "--workers", str(workers)], cwd=PROJECT_ROOT,
            env=server_env(database_url, registry_uri, workdir, **settings),
            stdout=log, stderr=subprocess.STDOUT)
    server = LiveServer(process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_until_healthy(server)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until_healthy(server: LiveServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"server exited with {server.process.returncode}:\n"
                                 f"{server.log_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.base_url}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"server not healthy after {START_TIMEOUT_SECONDS} s:\n"
                         f"{server.log_text()[-3000:]}")


def plain_pg_url(database_url: str) -> str:
    """The SQLAlchemy URL of a scratch database as a libpq URL for psycopg."""
    return database_url.replace("postgresql+psycopg://", "postgresql://", 1)


def count_rows(database_url: str, query: str, *params: object) -> int:
    """One number straight from PostgreSQL (not through the service under test)."""
    with psycopg.connect(plain_pg_url(database_url), connect_timeout=5) as connection:
        row = connection.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def stored_event_ids(database_url: str, prefix: str = "") -> set[str]:
    with psycopg.connect(plain_pg_url(database_url), connect_timeout=5) as connection:
        rows = connection.execute("SELECT event_id FROM events WHERE event_id LIKE %s",
                                  (prefix + "%",)).fetchall()
    return {row[0] for row in rows}


@contextlib.contextmanager
def holding_event_id(database_url: str, event_id: str, user_id: str, item_id: str
                     ) -> Iterator[psycopg.Connection]:
    """Insert `event_id` in a transaction left open: a batch holding the same event_id then
    waits inside its INSERT until this one ends (rolled back on exit). That pins the moment a
    fault is injected to "while the batch is being written", instead of racing for it."""
    connection = psycopg.connect(plain_pg_url(database_url), connect_timeout=5)
    try:
        connection.execute(
            "INSERT INTO events (event_id, user_id, item_id, type, occurred_at, context, "
            "ingested_at) VALUES (%s, %s, %s, 'view', now(), '{}', now())",
            (event_id, user_id, item_id))
        yield connection
    finally:
        connection.rollback()
        connection.close()


def wait_for_blocked_insert(database_url: str, timeout: float = 30.0) -> None:
    """Wait until a service connection is waiting on a row lock inside INSERT INTO events."""
    name = database_url.rsplit("/", 1)[1]
    deadline = time.monotonic() + timeout
    with psycopg.connect(plain_pg_url(database_url), connect_timeout=5,
                         autocommit=True) as connection:
        while time.monotonic() < deadline:
            waiting = connection.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                "AND wait_event_type = 'Lock' AND query LIKE %s",
                (name, "%INSERT INTO events%")).fetchone()
            if waiting and waiting[0] > 0:
                return
            time.sleep(0.02)
    raise AssertionError("no batch reached its INSERT within the timeout")
