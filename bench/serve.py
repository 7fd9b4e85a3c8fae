"""Serving latency and throughput of /recommend, /drift and /interest-profile.

Run: `make bench-serve` (or `.venv/bin/python -m bench.serve`). Needs a champion in the
configured MLflow registry (`make model`). Loads ml-100k into a fresh PostgreSQL database,
starts uvicorn on 127.0.0.1 (1 worker, then 2), and drives it from this process with a lean
keep-alive HTTP client (bench/loadgen.py) at concurrency 1 and 32. Also times the model's own
forward pass for one request in-process, so the service overhead is a ratio. Writes
bench/results/serve.json.

The mixed workload (`"mixed"`, issue 16): each connection alternates `POST /events` (one new
event for a user) and `GET /recommend/{that user}`, on PostgreSQL and on SQLite (ml-100k in a
fresh database of each), at c=1 and c=32 with 1 worker and c=32 with 2. `"sqlite_unchanged"`:
`/recommend` for users whose events have not changed, on SQLite. `--only` runs some sections
and keeps the others of the existing file; `--service-root` serves another checkout's code
(a baseline: same registry, database and load generator).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.core.config import VAR_DIR, Settings
from app.services.models import load_champion
from app.store.db import make_engine, make_session_factory
from bench.common import (
    RESULTS,
    fresh_database,
    machine,
    rss_mib,
    running_service_process,
    worker_pids,
    write_result,
)
from bench.loadgen import Step, run_load, run_mixed
from training.data import movielens
from training.data.importer import import_movielens

ENDPOINTS = {
    "recommend": "/recommend/{user}?k=10",
    "drift": "/drift/{user}",
    "interest_profile": "/interest-profile/{user}",
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def drive(base: str, path: str, users: list[str], concurrency: int,
          requests: int) -> dict[str, float]:
    """`requests` GETs spread over `concurrency` connections; latency per request in ms."""
    result = run_load(base, lambda n: path.format(user=users[n % len(users)]), concurrency,
                      requests)
    failures = requests - result.statuses.get(200, 0)
    if failures:
        raise RuntimeError(f"{failures} failed requests on {path}: {result.statuses}")
    return {"p50_ms": round(statistics.median(result.latencies_ms), 2),
            "p99_ms": round(percentile(result.latencies_ms, 99), 2),
            "rps": round(requests / result.elapsed_s, 1), "requests": requests}


def mixed_units(users: list[str], items: list[str], tag: str
                ) -> Callable[[int], list[Step]]:
    """Unit n: a new event for user n (a distinct item, a timestamp after every earlier one),
    then that user's recommendations."""
    base = time.time() - 86_400.0

    def unit(n: int) -> list[Step]:
        user = users[n % len(users)]
        event = {"event_id": f"{tag}-{n}", "user_id": user, "type": "rate", "value": 4,
                 "item_id": items[(n * 7919) % len(items)], "timestamp": base + n}
        body = json.dumps({"events": [event]}).encode()
        return [("events", "POST", "/events", body),
                ("recommend", "GET", f"/recommend/{user}?k=10", None)]

    return unit


def drive_mixed(base: str, users: list[str], items: list[str], concurrency: int, units: int,
                tag: str) -> dict[str, float]:
    result = run_mixed(base, mixed_units(users, items, tag), concurrency, units)
    failures = 2 * units - result.statuses.get(200, 0)
    if failures:
        raise RuntimeError(f"{failures} failed requests in the mixed workload: {result.statuses}")
    row: dict[str, float] = {
        "recommend_rps": round(units / result.elapsed_s, 1),
        "events_rps": round(units / result.elapsed_s, 1),
        "p50_ms": round(statistics.median(result.latencies_ms), 2),
        "p99_ms": round(percentile(result.latencies_ms, 99), 2)}
    for kind, latencies in sorted(result.by_kind.items()):
        row[f"{kind}_p50_ms"] = round(statistics.median(latencies), 2)
        row[f"{kind}_p99_ms"] = round(percentile(latencies, 99), 2)
    row["units"] = units
    row["load_average"] = round(os.getloadavg()[0], 2)
    return row


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


SECTIONS = ("classic", "mixed", "sqlite_unchanged", "model")


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


def mixed(dataset: movielens.MovieLens, users: list[str], args: argparse.Namespace,
          workdir: Path, results: dict[str, Any]) -> None:
    items = sorted({r.item_id for r in dataset.ratings})
    random.Random(1).shuffle(items)
    tag = f"bench-{int(time.time())}"
    for backend in args.backends.split(","):
        with fresh_database(backend, workdir) as url:
            _import(dataset, url)
            rows = results.setdefault("mixed", {}).setdefault(backend, {})
            for workers, runs in ((1, (("c1", 1, args.mixed_c1), ("c32", 32, args.mixed_c32))),
                                  (2, (("c32_2workers", 32, args.mixed_c32),))):
                with running_service_process(_base_env(url), workers=workers,
                                             root=args.service_root) as (base, _):
                    # every user once per worker first: the steady state, where each user
                    # has a state (a restart rebuilds each user's once, then steps it)
                    drive_mixed(base, users, items, 32, len(users) * workers,
                                f"{tag}-{backend}-{workers}-warm")
                    for key, concurrency, units in runs:
                        row = drive_mixed(base, users, items, concurrency, units,
                                          f"{tag}-{backend}-{workers}-{key}")
                        rows[key] = row
                        print(f"mixed {backend:10s} {key:13s} {row}", flush=True)


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests-c1", type=int, default=200)
    parser.add_argument("--requests-c32", type=int, default=2000)
    parser.add_argument("--mixed-c1", type=int, default=200, help="event+recommend pairs")
    parser.add_argument("--mixed-c32", type=int, default=2000)
    parser.add_argument("--backends", default="postgresql,sqlite")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections of {SECTIONS}; the others are kept "
                             "from the existing result file")
    parser.add_argument("--service-root", type=Path, default=None,
                        help="serve this checkout's code instead (a baseline)")
    parser.add_argument("--output", default="serve", help="bench/results/<output>.json")
    args = parser.parse_args()
    sections = set(args.only.split(","))
    dataset = movielens.load(VAR_DIR / "cache")
    users = sorted({r.user_id for r in dataset.ratings})
    random.Random(0).shuffle(users)
    previous_path = RESULTS / f"{args.output}.json"
    payload: dict[str, Any] = (json.loads(previous_path.read_text())
                               if previous_path.exists() else {})
    results: dict[str, Any] = {}
    memory: dict[str, list[float]] = {}  # resident MiB of each worker after its runs
    with tempfile.TemporaryDirectory() as workdir:
        if "classic" in sections:
            classic(dataset, users, args, Path(workdir), results, memory)
        if "mixed" in sections:
            mixed(dataset, users, args, Path(workdir), results)
        if "sqlite_unchanged" in sections:
            sqlite_unchanged(dataset, users, args, Path(workdir), results)
    if "model" in sections:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        timings = model_forward_ms(dataset, users, 200)
        payload.update({"model_forward_ms": timings["forward_ms"], "model_timings_ms": timings,
                        "device": device})
    if "mixed" in results and "mixed" in payload and set(args.backends.split(",")) != {
            "postgresql", "sqlite"}:
        results["mixed"] = {**payload["mixed"], **results["mixed"]}
    payload.update(results)
    if memory:
        payload["worker_rss_mib"] = memory
    forward = payload.get("model_forward_ms")
    payload.update({
        "benchmark": "serving latency/throughput, ml-100k on PostgreSQL (and SQLite for the "
                     "mixed and unchanged-user rows), uvicorn on 127.0.0.1",
        "command": "make bench-serve", "machine": machine(),
        "notes": "cached: /recommend asked for every user 10 times per worker before measuring, "
                 "so it answers "
                 "from the ranking remembered for the user's current events (as between two "
                 "events of a user); uncached: DRIFTREC_RANKING_CACHE_SIZE=0, every request "
                 "reads the history and runs the model (batched across concurrent requests). "
                 "mixed: each connection alternates POST /events (one new event for a user) "
                 "and GET /recommend/{that user} (recommend_rps = events_rps = pairs/s; p50/p99 "
                 "over both kinds, then per kind), after one such pair per user and worker. "
                 "load_average: the 1-minute load average after each row (2 cores, shared). "
                 "The load generator runs on the same 2 cores as the service.",
        "goals": "/recommend p99 < 50 ms at c32 and >= 300 rps with 2 workers; "
                 "overhead <= 2x model forward at c1; mixed (issue 16): PostgreSQL 2 workers "
                 "c32 >= 300 recommendations/s with p99 <= 50 ms, SQLite 1 worker c32 >= 150 "
                 "recommendations/s with p99 <= 100 ms; sqlite_unchanged >= 2000 req/s",
    })
    if forward:
        payload["overhead_ratio_c1"] = {
            name: round(rows["c1"]["p50_ms"] / forward, 2) for name, rows in payload.items()
            if isinstance(rows, dict) and "c1" in rows and "p50_ms" in rows.get("c1", {})}
    print(f"wrote {write_result(args.output, payload)}")


if __name__ == "__main__":
    main()
