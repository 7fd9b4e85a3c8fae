"""The serving benchmark's measuring parts (issue 26, bench/serve.py): the open-loop driver
against a tiny local HTTP server of known capacity (latencies counted from the scheduled
starts, so queueing shows), its schedule and the max-rate pick, and the CPU accounting from
/proc (ended children, PostgreSQL's backends). No service or benchmark runs here."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest

from bench import serve
from bench.common import (
    ProcessCpu,
    descendants,
    free_port,
    named_cpu_seconds,
    parse_stat,
    process_table,
    tree_cpu_seconds,
)
from bench.loadgen import Step, arrival_offsets, run_open
from bench.serve import (
    CpuReading,
    EventClock,
    cpu_per_unit,
    max_rate_within,
    mixed_units,
    open_row,
)
from tests.conftest import PG_ADMIN_URL
from training.data.movielens import Rating

SERVICE_S = 0.005  # per request, one at a time: 2 requests a pair, 100 pairs/s at most


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 lock: asyncio.Lock) -> None:
    """Keep-alive HTTP/1.1: each request takes SERVICE_S of the one server's time; paths
    starting with /fail answer 503."""
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while True:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            length = next((int(line.split(":")[1]) for line in head.split("\r\n")
                           if line.lower().startswith("content-length:")), 0)
            await reader.readexactly(length)
            async with lock:
                await asyncio.sleep(SERVICE_S)
            status = "503 Unavailable" if head.split(" ")[1].startswith("/fail") else "200 OK"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 2\r\n\r\n{{}}".encode())
            await writer.drain()
    writer.close()


@pytest.fixture(scope="module")
def slow_server() -> Iterator[str]:
    """A server that answers one request at a time, SERVICE_S each, in a thread."""
    loop = asyncio.new_event_loop()
    port = free_port()
    ready = threading.Event()

    async def start() -> asyncio.Server:
        lock = asyncio.Lock()
        return await asyncio.start_server(lambda r, w: _serve(r, w, lock), "127.0.0.1", port)

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield f"http://127.0.0.1:{port}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _pairs(second: str = "/recommend/u") -> list[Step]:
    return [("events", "POST", "/events", b'{"events": []}'), ("recommend", "GET", second, None)]


def test_open_loop_latency_counts_the_queue_when_arrivals_outpace_the_server(
        slow_server: str) -> None:
    under = open_row(run_open(slow_server, lambda n: _pairs(), arrival_offsets(20, 1.0)), 20)
    over = open_row(run_open(slow_server, lambda n: _pairs(), arrival_offsets(400, 0.5)), 400)
    # under capacity (20 of 100 pairs/s): a pair takes its two requests' service time
    assert under["scheduled"] == under["completed"] == 20 and under["errors"] == 0
    assert 2 * SERVICE_S * 1000 <= under["p50_ms"] < 100
    assert 15 <= under["achieved_rate"] <= 21
    # over capacity: 200 pairs need 2 s of the server; the arrivals do not wait for answers
    # (the pool grows), so the late pairs' latencies hold their wait in the queue
    assert over["scheduled"] == over["completed"] == 200 and over["errors"] == 0
    assert over["connections"] > 10
    assert over["p99_ms"] > 1000  # the last pair waited about 2 s - 0.5 s
    assert over["max_ms"] >= over["p99_ms"] > over["p50_ms"]
    assert over["achieved_rate"] < 110  # the server's capacity, not the arrival rate
    assert max_rate_within([under, over], limit_ms=300) == 20


def test_open_loop_latency_counts_the_wait_for_a_connection_too(slow_server: str) -> None:
    """Queueing on the client's side (one connection allowed) counts as well: a pair's
    latency runs from its scheduled start, not from when its request could be sent."""
    row = open_row(run_open(slow_server, lambda n: _pairs(), arrival_offsets(400, 0.25),
                            max_connections=1), 400)
    assert row["completed"] == 100 and row["connections"] == 1
    # 100 pairs of 10 ms one after the other: the last starts about 1 s - 0.25 s late
    assert row["p99_ms"] > 500 and row["start_lag_p99_ms"] > 500
    assert row["p50_ms"] > 10 * 2 * SERVICE_S * 1000


def test_open_loop_counts_a_pair_with_a_failed_request_or_no_connection_as_an_error(
        slow_server: str) -> None:
    failing = open_row(run_open(slow_server, lambda n: _pairs("/fail"),
                                arrival_offsets(50, 0.1)), 50)
    assert failing["scheduled"] == 5 and failing["errors"] == 5 and failing["completed"] == 0
    assert failing["p99_ms"] is None and max_rate_within([failing]) is None
    refused = run_open(f"http://127.0.0.1:{free_port()}", lambda n: _pairs(),
                       arrival_offsets(50, 0.1))
    assert refused.errors == 5 and not refused.latencies_ms


def test_arrival_schedules() -> None:
    assert arrival_offsets(4, 1.0) == [0.0, 0.25, 0.5, 0.75]
    poisson = arrival_offsets(200, 10.0, poisson=True, seed=3)
    assert poisson == arrival_offsets(200, 10.0, poisson=True, seed=3)  # fixed seed
    assert poisson != arrival_offsets(200, 10.0, poisson=True, seed=4)
    assert all(0 <= a < b < 10.0 for a, b in itertools.pairwise(poisson))
    assert 1800 < len(poisson) < 2200  # about rate x duration
    with pytest.raises(ValueError):
        arrival_offsets(0, 1.0)


def test_max_rate_is_the_highest_rate_within_the_limit_without_errors() -> None:
    def row(rate: float, p99: float | None, errors: int = 0) -> dict[str, object]:
        return {"rate": rate, "p99_ms": p99, "errors": errors}

    assert max_rate_within([row(50, 8.0), row(100, 49.9), row(200, 50.1)]) == 100
    assert max_rate_within([row(50, 8.0), row(100, 12.0, errors=1)]) == 50
    assert max_rate_within([row(50, 51.0), row(100, None, errors=3)]) is None
    assert max_rate_within([row(50, 50.0)], limit_ms=50.0) == 50


def test_cpu_per_pair_splits_service_and_database() -> None:
    before = CpuReading(service_s=10.0, database_s=4.0, wall_s=100.0)
    after = CpuReading(service_s=13.0, database_s=5.0, wall_s=102.0)
    assert cpu_per_unit(before, after, 500) == {
        "cpu_ms_per_pair": 8.0, "service_cpu_ms_per_pair": 6.0,
        "database_cpu_ms_per_pair": 2.0, "cpu_cores_busy": 2.0}
    sqlite = cpu_per_unit(CpuReading(1.0, None, 0.0), CpuReading(2.0, None, 4.0), 100,
                          "request")
    assert sqlite == {"cpu_ms_per_request": 10.0, "service_cpu_ms_per_request": 10.0,
                      "database_cpu_ms_per_request": None, "cpu_cores_busy": 0.25}
    with pytest.raises(ValueError):
        cpu_per_unit(before, after, 0)


def test_proc_stat_parsing_and_process_trees() -> None:
    # comm may hold spaces and parentheses; fields 14-17 are utime stime cutime cstime
    line = "4242 (a (b) c) S 17 4242 4242 0 -1 4194560 10 0 0 0 150 50 25 25 20 0 1 0 5 0 0"
    assert parse_stat(line, 100.0) == ProcessCpu(4242, 17, "a (b) c", 2.5)
    table = {pid: ProcessCpu(pid, ppid, "x", 1.0)
             for pid, ppid in ((1, 0), (10, 1), (11, 10), (12, 10), (13, 11), (20, 1))}
    assert descendants(table, 10) == {10, 11, 12, 13}
    assert tree_cpu_seconds(table, 10) == 4.0
    assert descendants(table, 99) == set()
    mine = process_table()[os.getpid()]
    assert mine.ppid == os.getppid() and mine.cpu_s > 0


BURN = "import sys, time\nwhile time.process_time() < 0.4: pass\nsys.stdin.read()"


def test_tree_cpu_counts_a_running_child_and_keeps_it_once_it_ended() -> None:
    """A worker's CPU is counted while it runs (as a descendant) and after it ended (in its
    waited-for parent's children's times): a difference of readings never loses it."""
    start = tree_cpu_seconds(process_table(), os.getpid())
    child = subprocess.Popen([sys.executable, "-c", BURN], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while process_table()[child.pid].cpu_s < 0.3:  # burning 0.4 s, then waiting on stdin
            assert time.monotonic() < deadline
            time.sleep(0.05)
        running = process_table()
        assert child.pid in descendants(running, os.getpid())
        alive = tree_cpu_seconds(running, os.getpid())
    finally:
        child.communicate(b"")
    ended = tree_cpu_seconds(process_table(), os.getpid())
    assert alive - start >= 0.3
    assert ended >= alive - 0.02  # its time moved into ours, not lost (tick rounding)


def test_postgres_cpu_counts_the_server_side_work_of_a_query() -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as connection:
        connection.execute("SELECT 1")  # the backend exists before the first reading
        before = named_cpu_seconds(process_table(), "postgres")
        connection.execute("SELECT count(*) FROM generate_series(1, 4000000)").fetchone()
        after = named_cpu_seconds(process_table(), "postgres")
    assert after - before >= 0.1


def test_event_timestamps_only_go_forward_across_runs() -> None:
    clock = EventClock()
    first = mixed_units(["u1", "u2"], ["i1", "i2", "i3"], "a", clock)
    second = mixed_units(["u1", "u2"], ["i1", "i2", "i3"], "b", clock)
    stamps = []
    for unit in (first(0), first(1), second(0), first(2), second(1)):
        event = json.loads(unit[0][3] or b"")["events"][0]
        stamps.append(event["timestamp"])
        assert unit[1][2] == f"/recommend/{event['user_id']}?k=10"
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


# ------------------------------------------------- the sections' output, on the tiny server

@pytest.fixture
def tiny_service(slow_server: str, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """bench.serve's servers and databases replaced by the tiny server (the CPU probe reads
    this process's tree); returns the worker counts the sections asked for."""
    started: list[int] = []

    @contextlib.contextmanager
    def service(env: dict[str, str], workers: int = 1, **_: object
                ) -> Iterator[tuple[str, object]]:
        started.append(workers)
        yield slow_server, SimpleNamespace(pid=os.getpid())

    @contextlib.contextmanager
    def database(backend: str, workdir: Path) -> Iterator[str]:
        yield f"{backend}://unused"

    @contextlib.contextmanager
    def mlflow_server(model_dir: Path, workers: int = 1) -> Iterator[tuple[str, object]]:
        started.append(-workers)
        yield slow_server, SimpleNamespace(pid=os.getpid())

    monkeypatch.setattr(serve, "running_service_process", service)
    monkeypatch.setattr(serve, "fresh_database", database)
    monkeypatch.setattr(serve, "_import", lambda dataset, url: None)
    monkeypatch.setattr(serve, "_base_env", lambda url: {})
    monkeypatch.setattr(serve, "running_mlflow_server", mlflow_server)
    monkeypatch.setattr(serve, "download_model", lambda *args: (Path("m"), "7"))
    monkeypatch.setattr(serve, "OPEN_LOOP_PAUSE_S", 0.0)
    return started


DATASET = SimpleNamespace(ratings=[Rating(f"u{u}", f"i{i}", 4.0, 1000 * u + i)
                                   for u in range(3) for i in range(5)])
USERS = ["u0", "u1", "u2"]


def test_mixed_section_writes_the_issue_keys(tiny_service: list[int], tmp_path: Path) -> None:
    args = serve.parse_args(["--mixed-c1", "4", "--mixed-c32", "20", "--open-rates", "20,400",
                             "--open-seconds", "0.25"])
    results: dict[str, dict[str, dict[str, object]]] = {}
    serve.mixed(DATASET, USERS, args, tmp_path, results, serve.EventClock())  # type: ignore[arg-type]
    assert tiny_service == [1, 2, 1, 2]  # per backend: 1 worker (c1, c32), then 2
    postgresql, sqlite = results["mixed"]["postgresql"], results["mixed"]["sqlite"]
    assert postgresql["c32_2workers"]["recommend_rps"] > 0  # type: ignore[index]
    assert postgresql["cpu_ms_per_pair"] == postgresql["c32_2workers"]["cpu_ms_per_pair"]  # type: ignore[index]
    assert postgresql["cpu_ms_per_pair"] == pytest.approx(
        postgresql["service_cpu_ms_per_pair"] + postgresql["database_cpu_ms_per_pair"],  # type: ignore[operator]
        abs=0.011)
    assert sqlite["database_cpu_ms_per_pair"] is None
    assert sqlite["cpu_ms_per_pair"] == sqlite["service_cpu_ms_per_pair"]
    table = postgresql["open_loop"]
    assert set(table["rates"]) == {"20", "400"} and table["workers"] == 2  # type: ignore[index]
    assert table["rates"]["400"]["p99_ms"] > 100  # type: ignore[index]  # 100 pairs/s at most
    assert table["max_rate_p99_50ms"] in (None, 20.0)  # type: ignore[index]
    assert postgresql["load_average_max"] > 0


def test_peer_section_compares_both_servers_on_the_same_histories(
        tiny_service: list[int], tmp_path: Path) -> None:
    args = serve.parse_args(["--peer-requests", "40", "--peer-history", "3"])
    rows = serve.peer_mlflow(DATASET, USERS, args, tmp_path)  # type: ignore[arg-type]
    assert tiny_service == [2, -2]  # ours, then MLflow's, with the same workers
    assert rows["model_version"] == "7" and rows["history_events"] == 3
    for name in ("recommend_plain_c32", "recommend_drift_aware_c32", "mlflow_c32"):
        assert rows[name]["requests"] == 40 and rows[name]["cpu_ms_per_request"] >= 0
    assert rows["ratio_drift_aware_c32"] == round(
        rows["recommend_drift_aware_c32"]["rps"] / rows["mlflow_c32"]["rps"], 2)
    assert serve.recent_histories(DATASET, ["u1"], 2) == [(["i3", "i4"], [1003.0, 1004.0])]  # type: ignore[arg-type]
