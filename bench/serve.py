"""Serving latency, throughput and CPU cost of /recommend, /drift, /interest-profile and the
event-then-recommend pair.

Run: `make bench-serve` (or `.venv/bin/python -m bench.serve`). Needs a champion in the
configured MLflow registry (`make model`). Loads ml-100k into a fresh PostgreSQL database,
starts uvicorn on 127.0.0.1 (1 worker, then 2), and drives it from this process with a lean
keep-alive HTTP client (bench/loadgen.py) at concurrency 1 and 32. Also times the model's own
forward pass for one request in-process, so the service overhead is a ratio. Writes
bench/results/serve.json.

The mixed workload (`"mixed"`, issues 16 and 26): each pair is `POST /events` (one new event
for a user, its timestamp after every earlier one of the run) then `GET /recommend/{that
user}`, on PostgreSQL and on SQLite (ml-100k in a fresh database of each), measured three ways:

- closed loop: each connection runs one pair after another, at c=1 and c=32 with 1 worker and
  c=32 with 2 (`c1`, `c32`, `c32_2workers`: pairs/s as `recommend_rps`, p50/p99);
- CPU per pair: around every closed-loop run, the CPU seconds (user + system, from /proc, ended
  children included) of the service's process tree (uvicorn and its workers) and, on
  PostgreSQL, of every `postgres` process (server and backends; nothing else uses it), the
  difference divided by the pairs done. The load generator (this process) is not counted.
  The headline `cpu_ms_per_pair` (service plus database) is the saturated 2-worker run's
  (`c32_2workers`); on SQLite it is the service's alone;
- open loop (`open_loop`, 2 workers): pairs start on a schedule fixed in advance (pair i at
  t0 + i / rate, or Poisson arrivals with a fixed seed with `--open-poisson`) at each of
  `--open-rates` pairs/s for `--open-seconds`, whether or not earlier pairs have been answered,
  each on an idle pooled connection or a new one. A pair's latency runs from its scheduled
  start to its recommendation, so queueing is counted. `max_rate_p99_50ms`: the highest rate
  tried whose p99 is at most 50 ms with no error (null if none).

`"peer_mlflow"`: MLflow's own scoring server (`mlflow models serve`, `POST /invocations`) and
our stateless `POST /recommend`, plain (`drift_aware=false`) and drift-aware, on the same
champion and the same histories (each user's last `--peer-history` ml-100k events), one after
the other at c=32 with the same worker count; `ratio_drift_aware_c32` is drift-aware
`POST /recommend` requests/s over MLflow's. Both rank at the history's last event (`at`),
the top 10 outside the history.

`"sqlite_unchanged"`: `/recommend` for users whose events have not changed, on SQLite.
`load_average_max`: the highest 1-minute load average seen during each section (the machine
is shared). `--only` runs some sections and keeps the others of the existing file;
`--service-root` serves another checkout's code (a baseline: same registry, database and load
generator).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.core.config import VAR_DIR, Settings
from app.services.models import load_champion
from app.store.db import make_engine, make_session_factory
from bench.common import (
    RESULTS,
    LoadWatch,
    download_model,
    fresh_database,
    machine,
    named_cpu_seconds,
    process_table,
    rss_mib,
    running_mlflow_server,
    running_service_process,
    tree_cpu_seconds,
    worker_pids,
    write_result,
)
from bench.loadgen import (
    LoadResult,
    OpenLoopResult,
    Step,
    arrival_offsets,
    run_load,
    run_mixed,
    run_open,
)
from training.data import movielens
from training.data.importer import import_movielens

ENDPOINTS = {
    "recommend": "/recommend/{user}?k=10",
    "drift": "/drift/{user}",
    "interest_profile": "/interest-profile/{user}",
}

# mixed workload: the run whose CPU per pair is the headline (saturated, 2 workers), and the
# workers of the service the open-loop rates run on
CPU_RUN = "c32_2workers"
CPU_KEYS = ("cpu_ms_per_pair", "service_cpu_ms_per_pair", "database_cpu_ms_per_pair")
OPEN_LOOP_WORKERS = 2
OPEN_LOOP_PAUSE_S = 1.0  # before each rate: the previous one's connections and work wind down


def percentile(values: list[float], q: float) -> float:
    """The `q`-th percentile of `values` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def latency_summary(latencies_ms: Sequence[float], prefix: str = "") -> dict[str, float | None]:
    """p50 and p99 (ms) of some latencies (None when there are none)."""
    if not latencies_ms:
        return {f"{prefix}p50_ms": None, f"{prefix}p99_ms": None}
    return {f"{prefix}p50_ms": round(statistics.median(latencies_ms), 2),
            f"{prefix}p99_ms": round(percentile(list(latencies_ms), 99), 2)}


def _checked(result: LoadResult, expected: int, what: str) -> None:
    failures = expected - result.statuses.get(200, 0)
    if failures:
        raise RuntimeError(f"{failures} failed requests in {what}: {result.statuses}")


def drive(base: str, path: str, users: list[str], concurrency: int,
          requests: int) -> dict[str, Any]:
    """`requests` GETs spread over `concurrency` connections; latency per request in ms."""
    result = run_load(base, lambda n: path.format(user=users[n % len(users)]), concurrency,
                      requests)
    _checked(result, requests, path)
    return {**latency_summary(result.latencies_ms),
            "rps": round(requests / result.elapsed_s, 1), "requests": requests}


class EventClock:
    """Timestamps of the benchmark's new events: a day before now, and always after the last
    one given (across runs and sections), so that no event lands before a user's latest one
    (which would make the service rebuild that user's drift state instead of stepping it)."""

    def __init__(self) -> None:
        self.last = 0.0

    def next(self) -> float:
        self.last = max(time.time() - 86_400.0, self.last + 0.001)
        return self.last


def mixed_units(users: list[str], items: list[str], tag: str, clock: EventClock
                ) -> Callable[[int], list[Step]]:
    """Unit n: a new event for user n (a distinct item, a timestamp after every earlier one),
    then that user's recommendations."""

    def unit(n: int) -> list[Step]:
        user = users[n % len(users)]
        event = {"event_id": f"{tag}-{n}", "user_id": user, "type": "rate", "value": 4,
                 "item_id": items[(n * 7919) % len(items)], "timestamp": clock.next()}
        body = json.dumps({"events": [event]}).encode()
        return [("events", "POST", "/events", body),
                ("recommend", "GET", f"/recommend/{user}?k=10", None)]

    return unit


# ------------------------------------------------------------------------ CPU per pair

@dataclass(frozen=True)
class CpuReading:
    service_s: float  # CPU seconds of the service's process tree so far
    database_s: float | None  # of every PostgreSQL process (None: no database server)
    wall_s: float  # time.perf_counter() when read


@dataclass(frozen=True)
class CpuProbe:
    """Reads the CPU seconds of one served process tree (and of PostgreSQL's processes)."""

    service_pid: int
    database: bool

    def read(self) -> CpuReading:
        table = process_table()
        return CpuReading(tree_cpu_seconds(table, self.service_pid),
                          named_cpu_seconds(table, "postgres") if self.database else None,
                          time.perf_counter())


def cpu_per_unit(before: CpuReading, after: CpuReading, units: int, unit: str = "pair"
                 ) -> dict[str, float | None]:
    """CPU milliseconds per unit of work between two readings: the service's, the
    database's (None without a server) and their sum; `cpu_cores_busy`: that sum over the
    wall time between the readings (at most the machine's cores)."""
    if units <= 0:
        raise ValueError("no unit of work done")
    service_s = after.service_s - before.service_s
    database_s = (None if before.database_s is None or after.database_s is None
                  else after.database_s - before.database_s)
    total_s = service_s + (database_s or 0.0)
    wall_s = after.wall_s - before.wall_s
    return {f"cpu_ms_per_{unit}": round(total_s * 1000 / units, 2),
            f"service_cpu_ms_per_{unit}": round(service_s * 1000 / units, 2),
            f"database_cpu_ms_per_{unit}": (None if database_s is None
                                            else round(database_s * 1000 / units, 2)),
            "cpu_cores_busy": round(total_s / wall_s, 2) if wall_s > 0 else None}


def drive_mixed(base: str, unit_of: Callable[[int], list[Step]], concurrency: int,
                units: int, probe: CpuProbe | None = None) -> dict[str, Any]:
    """Closed loop: `units` pairs over `concurrency` connections; with a probe, the CPU
    spent per pair."""
    before = probe.read() if probe else None
    result = run_mixed(base, unit_of, concurrency, units)
    after = probe.read() if probe else None
    _checked(result, 2 * units, "the mixed workload")
    row: dict[str, Any] = {"recommend_rps": round(units / result.elapsed_s, 1),
                           "events_rps": round(units / result.elapsed_s, 1),
                           **latency_summary(result.latencies_ms)}
    for kind, latencies in sorted(result.by_kind.items()):
        row.update(latency_summary(latencies, f"{kind}_"))
    row["units"] = units
    if before and after:
        row.update(cpu_per_unit(before, after, units))
    row["load_average"] = round(os.getloadavg()[0], 2)
    return row


# -------------------------------------------------------------------------- open loop

def open_row(result: OpenLoopResult, rate: float) -> dict[str, Any]:
    """One rate's figures: pair latencies from the scheduled starts, the rate achieved
    (pairs answered per second between the first scheduled start and the last answer)."""
    done = len(result.latencies_ms)
    return {"rate": rate, "scheduled": result.scheduled, "completed": done,
            "errors": result.errors, "unfinished": result.unfinished,
            "achieved_rate": round(done / result.elapsed_s, 1) if result.elapsed_s else 0.0,
            **latency_summary(result.latencies_ms),
            "max_ms": round(max(result.latencies_ms), 2) if done else None,
            **latency_summary(result.start_lag_ms, "start_lag_"),
            "connections": result.connections}


def max_rate_within(rows: Sequence[dict[str, Any]], limit_ms: float = 50.0) -> float | None:
    """The highest rate tried whose p99 is at most `limit_ms` with no error (None if none)."""
    passed = [row["rate"] for row in rows
              if row["errors"] == 0 and row["p99_ms"] is not None and row["p99_ms"] <= limit_ms]
    return max(passed, default=None)


def drive_open(base: str, unit_of: Callable[[int], list[Step]], rate: float,
               args: argparse.Namespace, probe: CpuProbe) -> dict[str, Any]:
    offsets = arrival_offsets(rate, args.open_seconds, args.open_poisson, seed=round(rate))
    before = probe.read()
    result = run_open(base, unit_of, offsets, args.open_drain, args.open_max_connections)
    after = probe.read()
    row = open_row(result, rate)
    if row["completed"]:
        row.update(cpu_per_unit(before, after, row["completed"]))
    row["load_average"] = round(os.getloadavg()[0], 2)
    return row


def open_loop(base: str, units: Callable[[str], Callable[[int], list[Step]]],
              args: argparse.Namespace, probe: CpuProbe) -> dict[str, Any]:
    """Each rate of `--open-rates` in turn (`units(name)`: a fresh stream of pairs)."""
    rows = []
    for rate in args.open_rates:
        time.sleep(OPEN_LOOP_PAUSE_S)
        row = drive_open(base, units(f"open{rate:g}"), rate, args, probe)
        rows.append(row)
        print(f"  open loop {rate:g}/s {row}", flush=True)
    return {"workers": OPEN_LOOP_WORKERS,
            "arrivals": "poisson (seed = the rate)" if args.open_poisson else "uniform",
            "seconds_per_rate": args.open_seconds,
            "rates": {f"{row['rate']:g}": row for row in rows},
            "max_rate_p99_50ms": max_rate_within(rows, 50.0)}


def model_forward_ms(dataset: movielens.MovieLens, users: list[str], repeats: int
                     ) -> dict[str, float]:
    """Median in-process times (ms per request, one thread as one serving worker) of the
    model's work for one /recommend: next-item scores over the last 50 events and the drift
    trace over the last 200, alone and per request when 32 requests share one batched pass."""
    torch.set_num_threads(1)
    bundle = load_champion(device="auto").bundle
    histories: dict[str, list[movielens.Rating]] = {}
    for rating in dataset.ratings:
        histories.setdefault(rating.user_id, []).append(rating)
    windows = []
    for user in users:
        events = sorted(histories[user], key=lambda r: r.timestamp)[-200:]
        windows.append(([r.item_id for r in events], [float(r.timestamp) for r in events]))
    steps = {
        "score": lambda group: bundle.score_next_batch([i[-50:] for i, _ in group],
                                                       [t[-50:] for _, t in group]),
        "drift": lambda group: bundle.drift_traces_batch([i for i, _ in group],
                                                         [t for _, t in group]),
    }
    timings: dict[str, float] = {}
    for step, run in steps.items():
        for size in (1, 32):
            times = []
            for n in range(max(3, repeats // size)):
                group = [windows[(n * size + j) % len(windows)] for j in range(size)]
                started = time.perf_counter()
                run(group)
                times.append((time.perf_counter() - started) * 1000 / size)
            timings[f"{step}_batch{size}_ms"] = round(statistics.median(times), 3)
    timings["forward_ms"] = round(timings["score_batch1_ms"] + timings["drift_batch1_ms"], 3)
    # the incremental drift state (app.ml.incremental): one new event added to a state built
    # over the previous events, what a /recommend after a new event now runs
    from app.ml.incremental import IncrementalDrift

    engine = IncrementalDrift(bundle.sequence_model, bundle.drift_detector)  # type: ignore[arg-type]
    encoded = []
    for items, times in windows:
        idx = np.asarray([bundle.index_of(i) for i in items], np.int64)
        encoded.append((idx, np.asarray(times, np.float64)))
    states = engine.start([(idx[:-1], ts[:-1]) for idx, ts in encoded])
    for size in (1, 32):
        times = []
        for n in range(max(3, repeats // size)):
            group = [(n * size + j) % len(encoded) for j in range(size)]
            started = time.perf_counter()
            engine.extend([(states[g], encoded[g][0][-1:], encoded[g][1][-1:]) for g in group])
            times.append((time.perf_counter() - started) * 1000 / size)
        timings[f"drift_step_batch{size}_ms"] = round(statistics.median(times), 3)
    timings["forward_incremental_ms"] = round(timings["score_batch1_ms"]
                                              + timings["drift_step_batch1_ms"], 3)
    return timings


# Each configuration: the service's settings, the endpoints measured, whether /recommend is
# first asked for every user (the steady state of repeated reads between a user's events).
CONFIGURATIONS = {
    "cached": ({}, ENDPOINTS, True),
    # every request runs the model: what a user with a new event since their last read costs
    "uncached": ({"DRIFTREC_RANKING_CACHE_SIZE": "0"},
                 {"recommend_uncached": ENDPOINTS["recommend"]}, False),
    # the same with each request's forward pass alone: what micro-batching is worth
    "uncached_unbatched": ({"DRIFTREC_RANKING_CACHE_SIZE": "0",
                            "DRIFTREC_MAX_INFERENCE_BATCH": "1"},
                           {"recommend_uncached_unbatched": ENDPOINTS["recommend"]}, False),
}


SECTIONS = ("classic", "mixed", "sqlite_unchanged", "peer_mlflow", "model")


def _import(dataset: movielens.MovieLens, url: str) -> None:
    engine = make_engine(url)
    import_movielens(dataset, make_session_factory(engine), Settings(database_url=url),
                     progress=False)
    engine.dispose()


def _base_env(url: str) -> dict[str, str]:
    settings = Settings()  # this checkout's registry, whichever code serves
    return {"DRIFTREC_DATABASE_URL": url, "DRIFTREC_API_KEYS": "",
            "DRIFTREC_MODEL_POLL_SECONDS": "0", "DRIFTREC_LOG_LEVEL": "WARNING",
            "DRIFTREC_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
            "DRIFTREC_MLFLOW_ARTIFACT_ROOT": settings.mlflow_artifact_root}


def classic(dataset: movielens.MovieLens, users: list[str], args: argparse.Namespace,
            workdir: Path, results: dict[str, Any], memory: dict[str, list[float]]) -> None:
    with fresh_database("postgresql", workdir) as url:
        _import(dataset, url)
        for extra_env, endpoints, warm_all in CONFIGURATIONS.values():
            for workers, runs in ((1, (("c1", 1, args.requests_c1),
                                       ("c32", 32, args.requests_c32))),
                                  (2, (("c32_2workers", 32, args.requests_c32),))):
                with running_service_process({**_base_env(url), **extra_env}, workers=workers,
                                             root=args.service_root) as (base, process):
                    for name, path in endpoints.items():
                        # every user many times: a request lands on whichever worker holds
                        # its connection, and each worker remembers only what it answered
                        steady = warm_all and name == "recommend"  # the remembered answers
                        warm_users, passes = (users, 10 * workers) if steady else (users[:64], 1)
                        drive(base, path, warm_users, 32, len(warm_users) * passes)
                        for key, concurrency, requests in runs:
                            row = drive(base, path, users, concurrency, requests)
                            row["load_average"] = round(os.getloadavg()[0], 2)
                            results.setdefault(name, {})[key] = row
                            print(f"{name:19s} {key:13s} {row}", flush=True)
                    memory.setdefault(f"{workers}_workers", [
                        rss_mib(pid) for pid in worker_pids(process.pid)])


def _mixed_runs(args: argparse.Namespace) -> tuple[tuple[int, tuple[tuple[str, int, int], ...]],
                                                   ...]:
    """(workers, ((key, concurrency, pairs), ...)) of the closed-loop runs."""
    return ((1, (("c1", 1, args.mixed_c1), ("c32", 32, args.mixed_c32))),
            (2, ((CPU_RUN, 32, args.mixed_c32),)))


def mixed_backend(dataset: movielens.MovieLens, users: list[str], items: list[str],
                  backend: str, args: argparse.Namespace, workdir: Path, clock: EventClock
                  ) -> dict[str, Any]:
    """The mixed workload on one backend: closed-loop runs with their CPU per pair, then the
    open-loop rates on the 2-worker service."""
    tag = f"bench-{int(time.time())}-{backend}"
    rows: dict[str, Any] = {}
    with LoadWatch() as load, fresh_database(backend, workdir) as url:
        _import(dataset, url)
        for workers, runs in _mixed_runs(args):
            with running_service_process(_base_env(url), workers=workers,
                                         root=args.service_root) as (base, process):
                probe = CpuProbe(process.pid, database=backend == "postgresql")

                def units(name: str, w: int = workers) -> Callable[[int], list[Step]]:
                    return mixed_units(users, items, f"{tag}-{w}-{name}", clock)

                # every user once per worker first: the steady state, where each user
                # has a state (a restart rebuilds each user's once, then steps it)
                drive_mixed(base, units("warm"), 32, len(users) * workers)
                for key, concurrency, pairs in runs:
                    rows[key] = drive_mixed(base, units(key), concurrency, pairs, probe)
                    print(f"mixed {backend:10s} {key:13s} {rows[key]}", flush=True)
                if workers == OPEN_LOOP_WORKERS and args.open_rates:
                    rows["open_loop"] = open_loop(base, units, args, probe)
    rows.update({key: rows[CPU_RUN][key] for key in CPU_KEYS})
    rows["cpu_run"] = CPU_RUN
    rows["load_average_max"] = load.max
    return rows


def mixed(dataset: movielens.MovieLens, users: list[str], args: argparse.Namespace,
          workdir: Path, results: dict[str, Any], clock: EventClock) -> None:
    items = sorted({r.item_id for r in dataset.ratings})
    random.Random(1).shuffle(items)
    for backend in args.backends.split(","):
        rows = mixed_backend(dataset, users, items, backend, args, workdir, clock)
        results.setdefault("mixed", {})[backend] = rows


# ------------------------------------------------------------------ MLflow's scoring server

def recent_histories(dataset: movielens.MovieLens, users: list[str], length: int
                     ) -> list[tuple[list[str], list[float]]]:
    """Each user's last `length` events (item ids, epoch seconds), oldest first."""
    by_user: dict[str, list[movielens.Rating]] = {}
    for rating in dataset.ratings:
        by_user.setdefault(rating.user_id, []).append(rating)
    histories = []
    for user in users:
        events = sorted(by_user[user], key=lambda r: r.timestamp)[-length:]
        histories.append(([r.item_id for r in events], [float(r.timestamp) for r in events]))
    return histories


def drive_posts(base: str, path: str, bodies: list[bytes], requests: int, probe: CpuProbe
                ) -> dict[str, Any]:
    """Every body once at c=32 (warm-up), then `requests` POSTs at c=32: rps, p50/p99 and
    the CPU per request of the server (and database) processes."""

    def unit(n: int) -> list[Step]:
        return [("post", "POST", path, bodies[n % len(bodies)])]

    _checked(run_mixed(base, unit, 32, len(bodies)), len(bodies), f"POST {path} (warm-up)")
    before = probe.read()
    result = run_mixed(base, unit, 32, requests)
    after = probe.read()
    _checked(result, requests, f"POST {path}")
    return {"rps": round(requests / result.elapsed_s, 1), **latency_summary(result.latencies_ms),
            "requests": requests, **cpu_per_unit(before, after, requests, "request"),
            "load_average": round(os.getloadavg()[0], 2)}


def peer_mlflow(dataset: movielens.MovieLens, users: list[str], args: argparse.Namespace,
                workdir: Path) -> dict[str, Any]:
    """MLflow's scoring server against our POST /recommend, same champion and histories."""
    histories = recent_histories(dataset, users, args.peer_history)
    settings = Settings()
    workers, requests = args.peer_workers, args.peer_requests
    rows: dict[str, Any] = {"workers": workers, "history_events": args.peer_history,
                            "concurrency": 32}
    with LoadWatch() as load:
        with fresh_database("postgresql", workdir) as url:
            _import(dataset, url)
            with running_service_process(_base_env(url), workers=workers,
                                         root=args.service_root) as (base, process):
                probe = CpuProbe(process.pid, database=True)
                for name, drift in (("plain", False), ("drift_aware", True)):
                    bodies = [json.dumps({"recent_item_ids": items, "timestamps": times,
                                          "at": times[-1], "k": 10,
                                          "drift_aware": drift}).encode()
                              for items, times in histories]
                    rows[f"recommend_{name}_c32"] = drive_posts(base, "/recommend", bodies,
                                                                requests, probe)
                    print(f"peer_mlflow recommend_{name}_c32 {rows[f'recommend_{name}_c32']}")
        model_dir, rows["model_version"] = download_model(
            settings.mlflow_tracking_uri, settings.model_name, settings.model_alias,
            workdir / "mlflow-model")
        with running_mlflow_server(model_dir, workers) as (base, process):
            bodies = [json.dumps({"inputs": [{"item_ids": items, "timestamps": times,
                                              "at": times[-1]}]}).encode()
                      for items, times in histories]
            rows["mlflow_c32"] = drive_posts(base, "/invocations", bodies, requests,
                                             CpuProbe(process.pid, database=False))
            print(f"peer_mlflow mlflow_c32 {rows['mlflow_c32']}", flush=True)
    mlflow_rps = rows["mlflow_c32"]["rps"]
    rows["ratio_plain_c32"] = round(rows["recommend_plain_c32"]["rps"] / mlflow_rps, 2)
    rows["ratio_drift_aware_c32"] = round(rows["recommend_drift_aware_c32"]["rps"]
                                          / mlflow_rps, 2)
    rows["load_average_max"] = load.max
    return rows


def sqlite_unchanged(dataset: movielens.MovieLens, users: list[str], args: argparse.Namespace,
                     workdir: Path, results: dict[str, Any]) -> None:
    """/recommend for users whose events have not changed, on SQLite (1 worker)."""
    path = ENDPOINTS["recommend"]
    with fresh_database("sqlite", workdir) as url:
        _import(dataset, url)
        with running_service_process(_base_env(url), workers=1,
                                     root=args.service_root) as (base, _):
            drive(base, path, users, 32, len(users) * 3)
            rows = results.setdefault("sqlite_unchanged", {})
            for key, concurrency, requests in (("c1", 1, args.requests_c1),
                                               ("c32", 32, args.requests_c32)):
                row = drive(base, path, users, concurrency, requests)
                row["load_average"] = round(os.getloadavg()[0], 2)
                rows[key] = row
                print(f"sqlite_unchanged {key:13s} {row}", flush=True)


def _rates(text: str) -> list[float]:
    rates = [float(r) for r in text.split(",") if r.strip()]
    if any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError("rates must be positive")
    return sorted(rates)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests-c1", type=int, default=200)
    parser.add_argument("--requests-c32", type=int, default=2000)
    parser.add_argument("--mixed-c1", type=int, default=200, help="event+recommend pairs")
    parser.add_argument("--mixed-c32", type=int, default=2000)
    parser.add_argument("--backends", default="postgresql,sqlite")
    parser.add_argument("--open-rates", type=_rates, default=[50.0, 100.0, 200.0],
                        help="open-loop arrival rates, pairs/s (comma-separated; empty: none)")
    parser.add_argument("--open-seconds", type=float, default=15.0,
                        help="open-loop duration of each rate")
    parser.add_argument("--open-poisson", action="store_true",
                        help="Poisson arrivals (seeded) instead of evenly spaced ones")
    parser.add_argument("--open-drain", type=float, default=30.0,
                        help="seconds after the last scheduled start before unfinished pairs "
                             "count as errors")
    parser.add_argument("--open-max-connections", type=int, default=512)
    parser.add_argument("--peer-requests", type=int, default=2000)
    parser.add_argument("--peer-workers", type=int, default=2,
                        help="workers of both servers in the MLflow comparison")
    parser.add_argument("--peer-history", type=int, default=50,
                        help="events per history in the MLflow comparison")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections of {SECTIONS}; the others are kept "
                             "from the existing result file")
    parser.add_argument("--service-root", type=Path, default=None,
                        help="serve this checkout's code instead (a baseline)")
    parser.add_argument("--output", default="serve", help="bench/results/<output>.json")
    return parser.parse_args(argv)


def run_sections(dataset: movielens.MovieLens, users: list[str], args: argparse.Namespace,
                 payload: dict[str, Any]) -> dict[str, Any]:
    """The HTTP sections asked for; their results, and the peak load average of each."""
    sections = set(args.only.split(","))
    results: dict[str, Any] = {}
    memory: dict[str, list[float]] = {}  # resident MiB of each worker after its runs
    loads: dict[str, float] = dict(payload.get("load_average_max", {}))
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        if "classic" in sections:
            with LoadWatch() as load:
                classic(dataset, users, args, workdir, results, memory)
            loads["classic"] = load.max
        if "mixed" in sections:
            mixed(dataset, users, args, workdir, results, EventClock())
            loads.update({f"mixed.{backend}": rows["load_average_max"]
                          for backend, rows in results["mixed"].items()})
        if "sqlite_unchanged" in sections:
            with LoadWatch() as load:
                sqlite_unchanged(dataset, users, args, workdir, results)
            loads["sqlite_unchanged"] = load.max
        if "peer_mlflow" in sections:
            results["peer_mlflow"] = peer_mlflow(dataset, users, args, workdir)
            loads["peer_mlflow"] = results["peer_mlflow"]["load_average_max"]
    if "mixed" in results and "mixed" in payload and set(args.backends.split(",")) != {
            "postgresql", "sqlite"}:
        results["mixed"] = {**payload["mixed"], **results["mixed"]}
    if memory:
        results["worker_rss_mib"] = memory
    results["load_average_max"] = loads
    return results


NOTES = (
    "cached: /recommend asked for every user 10 times per worker before measuring, so it "
    "answers from the ranking remembered for the user's current events (as between two "
    "events of a user); uncached: DRIFTREC_RANKING_CACHE_SIZE=0, every request reads the "
    "history and runs the model (batched across concurrent requests). mixed: each pair is "
    "POST /events (one new event for a user, timestamped after every earlier one) then "
    "GET /recommend/{that user}; closed loop: each connection runs one pair after another "
    "(recommend_rps = events_rps = pairs/s; p50/p99 over both kinds, then per kind), after "
    "one such pair per user and worker. cpu_ms_per_pair: CPU seconds (user + system, /proc, "
    "ended children included) of the service's process tree plus, on PostgreSQL, of every "
    "postgres process, between just before and just after a run, per pair; the load "
    "generator is excluded; the top-level figures of mixed.<backend> are those of "
    "c32_2workers (cpu_run); cpu_cores_busy: that CPU over the run's wall time. open_loop: "
    "pairs started on a fixed schedule (arrivals), each on an idle or a new connection, "
    "latency from the scheduled start to the recommendation (queueing included); "
    "achieved_rate: pairs answered per second from the first scheduled start to the last "
    "answer; start_lag: how late the load generator sent a pair's first request; "
    "max_rate_p99_50ms: the highest rate with p99 <= 50 ms and no error. peer_mlflow: "
    "MLflow's scoring server (mlflow models serve, env-manager local, POST /invocations) "
    "and POST /recommend on the same champion and histories, the same workers, one after "
    "the other, c=32; ratio_*: POST /recommend rps over MLflow's. load_average: the "
    "1-minute load average after each row; load_average_max: its highest value during each "
    "section (2 cores, shared). The load generator runs on the same 2 cores as the service.")

GOALS = (
    "/recommend p99 < 50 ms at c32 and >= 300 rps with 2 workers; overhead <= 2x model "
    "forward at c1; mixed (issue 26): PostgreSQL service plus database cpu_ms_per_pair <= 6, "
    "open_loop.max_rate_p99_50ms >= 200, c32_2workers >= 300 pairs/s; "
    "peer_mlflow.ratio_drift_aware_c32 >= 3; mixed (issue 16): SQLite 1 worker c32 >= 150 "
    "pairs/s with p99 <= 100 ms; sqlite_unchanged >= 2000 req/s")


def main() -> None:
    args = parse_args()
    dataset = movielens.load(VAR_DIR / "cache")
    users = sorted({r.user_id for r in dataset.ratings})
    random.Random(0).shuffle(users)
    previous_path = RESULTS / f"{args.output}.json"
    payload: dict[str, Any] = (json.loads(previous_path.read_text())
                               if previous_path.exists() else {})
    payload.update(run_sections(dataset, users, args, payload))
    if "model" in args.only.split(","):
        device = "cuda" if torch.cuda.is_available() else "cpu"
        timings = model_forward_ms(dataset, users, 200)
        payload.update({"model_forward_ms": timings["forward_ms"], "model_timings_ms": timings,
                        "device": device})
    forward = payload.get("model_forward_ms")
    payload.update({
        "benchmark": "serving latency/throughput and CPU per pair, ml-100k on PostgreSQL "
                     "(and SQLite for the mixed and unchanged-user rows), uvicorn on "
                     "127.0.0.1; MLflow's scoring server beside POST /recommend",
        "command": " ".join(["python -m bench.serve", *sys.argv[1:]]),
        # settings given to the services through the environment (e.g. the on-ingest drift
        # state or group commit), so a result says which configuration it measured
        "service_env": {key: value for key, value in sorted(os.environ.items())
                        if key.startswith("DRIFTREC_") and "URL" not in key},
        "machine": machine(), "notes": NOTES, "goals": GOALS})
    if forward:
        payload["overhead_ratio_c1"] = {
            name: round(rows["c1"]["p50_ms"] / forward, 2) for name, rows in payload.items()
            if isinstance(rows, dict) and "c1" in rows and "p50_ms" in rows.get("c1", {})}
    print(f"wrote {write_result(args.output, payload)}")


if __name__ == "__main__":
    main()
