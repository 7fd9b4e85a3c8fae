"""A lean HTTP/1.1 load generator: keep-alive requests over raw asyncio streams on uvloop.

The benchmark's load generator shares the machine's 2 cores with the service. httpx's async
client spends a few milliseconds of CPU per request at 32 connections (at c32 it capped even
`/healthz` near 200 requests/s), so it measured itself more than the service. This client does
only what the benchmark needs: GET and POST, keep-alive, `Content-Length` bodies, status codes.
`run_mixed` drives sequences of requests per unit of work (a POST then a GET, for the mixed
event-then-recommend workload), each connection running one unit at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import uvloop


@dataclass
class LoadResult:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    # per request kind (run_mixed): latencies and counts
    by_kind: dict[str, list[float]] = field(default_factory=dict)


# One request of a unit of work: (kind, method, path, JSON body or None).
Step = tuple[str, str, str, bytes | None]


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value.strip())
        elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
            raise RuntimeError("chunked responses are not supported by this load generator")
    return status, await reader.readexactly(length)


def run_load(base: str, path_of: Callable[[int], str], concurrency: int,
             requests: int) -> LoadResult:
    """`requests` GETs of `path_of(n)` over `concurrency` keep-alive connections."""
    result = uvloop.run(_run_mixed(base, lambda n: [("get", "GET", path_of(n), None)],
                                   concurrency, requests))
    result.by_kind.clear()  # one kind: the overall latencies say it all
    return result


def _encode(method: str, path: str, body: bytes | None, host: str, port: int) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: application/json\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + (body or b"")


async def _run_mixed(base: str, unit_of: Callable[[int], list[Step]], concurrency: int,
                     units: int) -> LoadResult:
    url = urlsplit(base)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    result = LoadResult()
    counter = iter(range(units))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for n in counter:
                for kind, method, path, body in unit_of(n):
                    started = time.perf_counter()
                    writer.write(_encode(method, path, body, host, port))
                    status, _ = await _read_response(reader)
                    latency = (time.perf_counter() - started) * 1000
                    result.latencies_ms.append(latency)
                    result.by_kind.setdefault(kind, []).append(latency)
                    result.statuses[status] = result.statuses.get(status, 0) + 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - started
    return result


def run_mixed(base: str, unit_of: Callable[[int], list[Step]], concurrency: int,
              units: int) -> LoadResult:
    """`units` units of work (`unit_of(n)`: requests sent one after the other on one
    connection) over `concurrency` keep-alive connections."""
    return uvloop.run(_run_mixed(base, unit_of, concurrency, units))
