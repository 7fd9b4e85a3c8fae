"""Connections are timed out before a request completes (issue 12, point 7).

A real uvicorn server in a thread, configured the way `python -m app serve` configures it
(`connection_limits`), with a one-second request-read deadline: a silent connection, one
sending its headers a byte at a time and one that stops halfway through its body are all
closed within a few seconds, while whole requests (and keep-alive reuse) are served.
Ports 18200-18299.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from app.__main__ import connection_limits
from app.core import server
from app.core.config import Settings

DEADLINE = 1.0
CLOSED_WITHIN = DEADLINE + 3.0


async def _echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body") or message["type"] == "http.disconnect":
            break
    text = b"got %d bytes" % len(body)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(text)).encode())]})
    await send({"type": "http.response.body", "body": text})


@pytest.fixture(params=["httptools", "h11"])
def address(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[tuple[str, int]]:
    port = {"httptools": 18231, "h11": 18232}[request.param]
    settings = Settings(database_url="sqlite://", request_read_timeout_seconds=DEADLINE,
                        keep_alive_timeout_seconds=5)
    monkeypatch.setenv(server.TIMEOUT_ENV, "")  # set by connection_limits, undone after
    limits = connection_limits(settings)
    limits["http"] = server.PROTOCOLS[request.param]
    config = uvicorn.Config(_echo, host="127.0.0.1", port=port, log_level="warning",
                            lifespan="off", **limits)
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not instance.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    yield "127.0.0.1", port
    instance.should_exit = True
    thread.join(10)


def _closed_after(connection: socket.socket, limit: float, trickle: bytes = b"") -> float:
    """Seconds until the server closes the connection (sending `trickle` a byte at a time)."""
    started = time.monotonic()
    connection.settimeout(0.2)
    sent = 0
    while time.monotonic() - started < limit:
        if sent < len(trickle):
            try:
                connection.sendall(trickle[sent:sent + 1])
            except OSError:
                return time.monotonic() - started
            sent += 1
        try:
            if connection.recv(4096) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - started
    raise AssertionError(f"connection still open after {limit} s")


def test_a_silent_connection_is_closed(address: tuple[str, int]) -> None:
    with socket.create_connection(address) as connection:
        assert _closed_after(connection, CLOSED_WITHIN) >= DEADLINE * 0.8


def test_headers_sent_a_byte_at_a_time_are_cut_off(address: tuple[str, int]) -> None:
    endless = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"s" * 200
    with socket.create_connection(address) as connection:
        _closed_after(connection, CLOSED_WITHIN, endless)


def test_a_body_that_stops_halfway_is_cut_off(address: tuple[str, int]) -> None:
    with socket.create_connection(address) as connection:
        connection.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                           + b"b" * 10)
        _closed_after(connection, CLOSED_WITHIN)


def test_whole_requests_are_served_and_connections_reused(address: tuple[str, int]) -> None:
    with socket.create_connection(address) as connection:
        connection.settimeout(5)
        for _ in range(3):  # each within the deadline, together beyond it
            connection.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
            answer = connection.recv(4096)
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"got 3 bytes")
            time.sleep(DEADLINE * 0.6)
