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
from app.ml.loader import load_settings_champion
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
                     ) -> tuple[float, float]:
    """Median time of the model's own work for one /recommend (next-item scores + drift
    trace), and the same per request when 32 requests share one batched pass."""
    torch.set_num_threads(1)  # as one serving worker runs it
    bundle = load_settings_champion("auto").bundle
    histories: dict[str, list[movielens.Rating]] = {}
    for rating in dataset.ratings:
        histories.setdefault(rating.user_id, []).append(rating)
    windows = []
    for user in users:
        events = sorted(histories[user], key=lambda r: r.timestamp)[-200:]
        windows.append(([r.item_id for r in events], [float(r.timestamp) for r in events]))
    single, batched = [], []
    for n in range(repeats):
        items, stamps = windows[n % len(windows)]
        started = time.perf_counter()
        bundle.score_next(items[-50:], stamps[-50:])
        bundle.drift_probabilities(items, stamps)
        single.append((time.perf_counter() - started) * 1000)
    for n in range(max(1, repeats // 32)):
        group = [windows[(n * 32 + j) % len(windows)] for j in range(32)]
        started = time.perf_counter()
        bundle.score_next_batch([i[-50:] for i, _ in group], [t[-50:] for _, t in group])
        bundle.drift_traces_batch([i for i, _ in group], [t for _, t in group])
        batched.append((time.perf_counter() - started) * 1000 / 32)
    return round(statistics.median(single), 3), round(statistics.median(batched), 3)


# Each configuration: the service's settings, the endpoints measured, whether every user is
# requested once before measuring (the steady state of repeated reads between events).
CONFIGURATIONS = {
    "cached": ({}, ENDPOINTS, True),
    # every request runs the model: what a user with a new event since their last read costs
    "uncached": ({"DRIFTREC_RANKING_CACHE_SIZE": "0"},
                 {"recommend_uncached": ENDPOINTS["recommend"]}, False),
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
                        # every user several times: requests land on workers at random
                        warm_users = users if warm_all else users[:64]
                        drive(base, path, warm_users, 8, len(warm_users) * 3 * workers)
                        for key, concurrency, requests in runs:
                            row = drive(base, path, users, concurrency, requests)
                            results.setdefault(name, {})[key] = row
                            print(f"{name:19s} {key:13s} {row}")
                    memory.setdefault(f"{workers}_workers", [
                        rss_mib(pid) for pid in worker_pids(process.pid)])
        device = "cuda" if torch.cuda.is_available() else "cpu"
        forward, forward_batched = model_forward_ms(dataset, users, 200)
    payload = {
        "benchmark": "serving latency/throughput, ml-100k on PostgreSQL, uvicorn on 127.0.0.1",
        "command": "make bench-serve", "machine": machine(), **results,
        "model_forward_ms": forward, "model_forward_ms_batched_32": forward_batched,
        "device": device, "worker_rss_mib": memory,
        "overhead_ratio_c1": {name: round(rows["c1"]["p50_ms"] / forward, 2)
                              for name, rows in results.items()},
        "notes": "cached: every user requested once before measuring, so /recommend answers "
                 "from the ranking remembered for the user's current events (as between two "
                 "events of a user); uncached: DRIFTREC_RANKING_CACHE_SIZE=0, every request "
                 "reads the history and runs the model (batched across concurrent requests). "
                 "The load generator runs on the same 2 cores as the service.",
        "goals": "/recommend p99 < 50 ms at c32 and >= 300 rps with 2 workers; "
                 "overhead <= 2x model forward at c1",
    }
    print(f"model forward {forward} ms ({forward_batched} ms/request in batches of 32) on "
          f"{device}; wrote {write_result('serve', payload)}")


if __name__ == "__main__":
    main()
