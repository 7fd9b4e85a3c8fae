"""Serving latency and throughput of /recommend, /drift and /interest-profile.

Run: `make bench-serve` (or `.venv/bin/python -m bench.serve`). Needs a champion in the
configured MLflow registry (`make model`). Loads ml-100k into a fresh PostgreSQL database,
starts uvicorn on 127.0.0.1 (1 worker, then 2), and drives it from this process with a lean
keep-alive HTTP client (bench/loadgen.py) at concurrency 1 and 32. Also times the model's own
forward pass for one request in-process, so the service overhead is a ratio. Writes
bench/results/serve.json.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from app.core.config import VAR_DIR, Settings
from app.services.models import load_champion
from app.store.db import make_engine, make_session_factory
from bench.common import (
    fresh_database,
    machine,
    rss_mib,
    running_service_process,
    worker_pids,
    write_result,
)
from bench.loadgen import run_load
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests-c1", type=int, default=200)
    parser.add_argument("--requests-c32", type=int, default=2000)
    args = parser.parse_args()
    dataset = movielens.load(VAR_DIR / "cache")
    users = sorted({r.user_id for r in dataset.ratings})
    random.Random(0).shuffle(users)
    results: dict[str, Any] = {}
    memory: dict[str, list[float]] = {}  # resident MiB of each worker after its runs
    with tempfile.TemporaryDirectory() as workdir, \
            fresh_database("postgresql", Path(workdir)) as url:
        engine = make_engine(url)
        import_movielens(dataset, make_session_factory(engine), Settings(database_url=url),
                         progress=False)
        engine.dispose()
        base_env = {"DRIFTREC_DATABASE_URL": url, "DRIFTREC_API_KEYS": "",
                    "DRIFTREC_MODEL_POLL_SECONDS": "0", "DRIFTREC_LOG_LEVEL": "WARNING"}
        for extra_env, endpoints, warm_all in CONFIGURATIONS.values():
            for workers, runs in ((1, (("c1", 1, args.requests_c1),
                                       ("c32", 32, args.requests_c32))),
                                  (2, (("c32_2workers", 32, args.requests_c32),))):
                with running_service_process({**base_env, **extra_env},
                                             workers=workers) as (base, process):
                    for name, path in endpoints.items():
                        # every user many times: a request lands on whichever worker holds
                        # its connection, and each worker remembers only what it answered
                        steady = warm_all and name == "recommend"  # the remembered answers
                        warm_users, passes = (users, 10 * workers) if steady else (users[:64], 1)
                        drive(base, path, warm_users, 32, len(warm_users) * passes)
                        for key, concurrency, requests in runs:
                            row = drive(base, path, users, concurrency, requests)
                            results.setdefault(name, {})[key] = row
                            print(f"{name:19s} {key:13s} {row}")
                    memory.setdefault(f"{workers}_workers", [
                        rss_mib(pid) for pid in worker_pids(process.pid)])
        device = "cuda" if torch.cuda.is_available() else "cpu"
        timings = model_forward_ms(dataset, users, 200)
        forward = timings["forward_ms"]
    payload = {
        "benchmark": "serving latency/throughput, ml-100k on PostgreSQL, uvicorn on 127.0.0.1",
        "command": "make bench-serve", "machine": machine(), **results,
        "model_forward_ms": forward, "model_timings_ms": timings,
        "device": device, "worker_rss_mib": memory,
        "overhead_ratio_c1": {name: round(rows["c1"]["p50_ms"] / forward, 2)
                              for name, rows in results.items()},
        "notes": "cached: /recommend asked for every user 10 times per worker before measuring, "
                 "so it answers "
                 "from the ranking remembered for the user's current events (as between two "
                 "events of a user); uncached: DRIFTREC_RANKING_CACHE_SIZE=0, every request "
                 "reads the history and runs the model (batched across concurrent requests). "
                 "The load generator runs on the same 2 cores as the service.",
        "goals": "/recommend p99 < 50 ms at c32 and >= 300 rps with 2 workers; "
                 "overhead <= 2x model forward at c1",
    }
    print(f"model forward {forward} ms on {device} ({timings}); "
          f"wrote {write_result('serve', payload)}")


if __name__ == "__main__":
    main()
