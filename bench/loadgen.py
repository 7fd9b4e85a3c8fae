"""A lean HTTP/1.1 load generator: keep-alive GETs over raw asyncio streams on uvloop.

The benchmark's load generator shares the machine's 2 cores with the service. httpx's async
client spends a few milliseconds of CPU per request at 32 connections (at c32 it capped even
`/healthz` near 200 requests/s), so it measured itself more than the service. This client does
only what the benchmark needs: GET, keep-alive, `Content-Length` bodies, status codes.
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


async def _run(base: str, path_of: Callable[[int], str], concurrency: int,
               requests: int) -> LoadResult:
    url = urlsplit(base)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    result = LoadResult()
    counter = iter(range(requests))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for n in counter:
                request = (f"GET {path_of(n)} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                           "Accept: application/json\r\n\r\n").encode()
                started = time.perf_counter()
                writer.write(request)
                status, _ = await _read_response(reader)
                result.latencies_ms.append((time.perf_counter() - started) * 1000)
                result.statuses[status] = result.statuses.get(status, 0) + 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - started
    return result


def run_load(base: str, path_of: Callable[[int], str], concurrency: int,
             requests: int) -> LoadResult:
    """`requests` GETs of `path_of(n)` over `concurrency` keep-alive connections."""
    return uvloop.run(_run(base, path_of, concurrency, requests))
