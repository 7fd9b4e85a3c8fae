"""Connection deadlines uvicorn lacks: a request must arrive whole within a time limit.

uvicorn times out only an idle keep-alive connection after a response (`timeout_keep_alive`).
A connection that never sends a byte, one that sends its headers a byte at a time, and one
that declares a body and stops sending it were all held open indefinitely (issue 12, point
7: 1,000 of each still open after 25 s), each holding a socket and a slot of the server.

`GuardedHttpToolsProtocol` / `GuardedH11Protocol` (uvicorn's two HTTP/1.1 implementations with
one timer more) close a connection whose request (headers and body) has not been read in
full `REQUEST_READ_TIMEOUT` seconds after the connection opened or the previous response
ended. Once the request is read, the app's handling is bounded by the statement timeout, not
by this. `python -m app serve` selects them by import string, so every worker uses them.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Read by each worker process from its environment (`serve` sets it from the settings).
TIMEOUT_ENV = "DRIFTREC_REQUEST_READ_TIMEOUT_SECONDS"
DEFAULT_REQUEST_READ_TIMEOUT = 15.0


def request_read_timeout() -> float:
    try:
        value = float(os.environ.get(TIMEOUT_ENV, DEFAULT_REQUEST_READ_TIMEOUT))
    except ValueError:
        return DEFAULT_REQUEST_READ_TIMEOUT
    return value if value > 0 else DEFAULT_REQUEST_READ_TIMEOUT


class _RequestDeadline:
    """Mixin for a uvicorn HTTP protocol: the request-read deadline (see the module doc)."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    cycle: Any

    def _arm_deadline(self) -> None:
        self._disarm_deadline()
        self._read_cycle = self.cycle  # the request being read is the one after this cycle
        self._deadline = self.loop.call_later(self._timeout, self._on_deadline)

    def _disarm_deadline(self) -> None:
        timer = getattr(self, "_deadline", None)
        if timer is not None:
            timer.cancel()
        self._deadline = None

    def _on_deadline(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def _check_request_read(self) -> None:
        # A new cycle whose body has all arrived: the request was read in time.
        cycle = self.cycle
        if (getattr(self, "_deadline", None) is not None and cycle is not None
                and cycle is not self._read_cycle and not cycle.more_body):
            self._disarm_deadline()

    # The protocol's own hooks, each extended by the deadline (the mixin comes first in the
    # bases, so super() is the uvicorn protocol's method).
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timeout = request_read_timeout()

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        self._check_request_read()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():
            self._arm_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_deadline()
        super().connection_lost(exc)  # type: ignore[misc]


class GuardedHttpToolsProtocol(_RequestDeadline, HttpToolsProtocol):
    """uvicorn's httptools protocol with the request-read deadline."""


class GuardedH11Protocol(_RequestDeadline, H11Protocol):
    """uvicorn's h11 protocol with the request-read deadline."""


PROTOCOLS = {"httptools": "app.core.server:GuardedHttpToolsProtocol",
             "h11": "app.core.server:GuardedH11Protocol"}
