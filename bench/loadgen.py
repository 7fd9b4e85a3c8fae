"""A lean HTTP/1.1 load generator: keep-alive requests over raw asyncio streams on uvloop.

The benchmark's load generator shares the machine's 2 cores with the service. httpx's async
client spends a few milliseconds of CPU per request at 32 connections (at c32 it capped even
`/healthz` near 200 requests/s), so it measured itself more than the service. This client does
only what the benchmark needs: GET and POST, keep-alive, `Content-Length` bodies, status codes.
`run_mixed` drives sequences of requests per unit of work (a POST then a GET, for the mixed
event-then-recommend workload), each connection running one unit at a time (closed loop: a new
unit starts when one ends). `run_open` starts units on a fixed schedule instead (open loop:
arrivals do not wait for answers), so a service slower than the arrival rate shows as queueing
in the latencies, which are measured from each unit's scheduled start.
"""

from __future__ import annotations

import asyncio
import random
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


# --------------------------------------------------------------------------- open loop

def arrival_offsets(rate: float, duration_s: float, poisson: bool = False, seed: int = 0
                    ) -> list[float]:
    """Scheduled start of each unit, seconds after the run's start, for `rate` units/s over
    `duration_s`: evenly spaced (unit i at i / rate), or Poisson arrivals (exponential gaps
    of mean 1 / rate, from `random.Random(seed)`: the same schedule on every run)."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    if not poisson:
        return [i / rate for i in range(round(rate * duration_s))]
    draw, offsets, at = random.Random(seed), [], 0.0
    while at < duration_s:
        offsets.append(at)
        at += draw.expovariate(rate)
    return offsets


@dataclass
class OpenLoopResult:
    scheduled: int = 0
    # per unit answered 200 throughout: from its scheduled start to its last response (ms),
    # so the time it waited for the load generator or a connection counts
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0  # units with a non-200 answer, a broken connection, or not done in time
    unfinished: int = 0  # of the errors: units still running at the drain deadline
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed_s: float = 0.0  # from the first scheduled start to the last unit's end
    start_lag_ms: list[float] = field(default_factory=list)  # sent this late after schedule
    connections: int = 0  # connections opened: the pool's largest size


class _Pool:
    """Keep-alive connections that grows on demand (up to `limit`; more units wait)."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.permits = asyncio.Semaphore(limit)
        self.opened = 0

    async def take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        await self.permits.acquire()
        while self.idle:
            reader, writer = self.idle.pop()
            if not reader.at_eof():  # the server closes idle keep-alive connections
                return reader, writer
            writer.close()
        try:
            connection = await asyncio.open_connection(self.host, self.port)
        except OSError:
            self.permits.release()
            raise
        self.opened += 1
        return connection

    def give(self, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None
             ) -> None:
        """Return a connection (None: it broke and was closed)."""
        if connection is not None:
            self.idle.append(connection)
        self.permits.release()

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


async def _open_unit(pool: _Pool, steps: list[Step], due: float, result: OpenLoopResult
                     ) -> float:
    """One unit of an open-loop run on a pooled connection; returns when it ended."""
    connection = None
    ok = True
    try:
        connection = await pool.take()
        reader, writer = connection
        result.start_lag_ms.append((time.perf_counter() - due) * 1000)
        for _, method, path, body in steps:
            writer.write(_encode(method, path, body, pool.host, pool.port))
            status, _ = await _read_response(reader)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            ok = ok and status == 200
    except (OSError, asyncio.IncompleteReadError, ValueError):
        ok = False
        if connection is not None:
            connection[1].close()
            connection = None
        else:  # the pool could not open one: no permit held
            result.errors += 1
            return time.perf_counter()
    ended = time.perf_counter()
    pool.give(connection)
    if ok:
        result.latencies_ms.append((ended - due) * 1000)
    else:
        result.errors += 1
    return ended


async def _run_open(base: str, unit_of: Callable[[int], list[Step]], offsets: list[float],
                    drain_s: float, max_connections: int) -> OpenLoopResult:
    url = urlsplit(base)
    pool = _Pool(url.hostname or "127.0.0.1", url.port or 80, max_connections)
    result = OpenLoopResult(scheduled=len(offsets))
    tasks: list[asyncio.Task[float]] = []
    t0 = time.perf_counter() + 0.05  # room to build the first units before they are due
    for n, offset in enumerate(offsets):
        due = t0 + offset
        steps = unit_of(n)  # built before its start: the schedule is the client's, not ours
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_open_unit(pool, steps, due, result)))
    done, pending = await asyncio.wait(tasks, timeout=drain_s) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    result.unfinished = len(pending)
    result.errors += len(pending)
    ends = [task.result() for task in done]
    result.elapsed_s = (max([*ends, t0 + offsets[-1]]) - t0) if offsets else 0.0
    result.connections = pool.opened
    pool.close()
    return result


def run_open(base: str, unit_of: Callable[[int], list[Step]], offsets: list[float],
             drain_s: float = 30.0, max_connections: int = 512) -> OpenLoopResult:
    """Open loop: unit n (`unit_of(n)`, its requests one after the other on one connection)
    starts at `offsets[n]` seconds after the run's start whether or not earlier units have
    ended, on an idle pooled keep-alive connection or a new one (at most `max_connections`
    at once: beyond that a unit waits, and its wait counts in its latency). Units not done
    `drain_s` after the last start are cancelled and counted as errors."""
    return uvloop.run(_run_open(base, unit_of, offsets, drain_s, max_connections))
