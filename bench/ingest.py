"""Ingestion throughput: ml-100k through `POST /events` (batches of 1,000) and the importer
(its shared batch writer: batches of 5,000, one stored while the next is validated).

Run: `make bench-ingest` (or `.venv/bin/python -m bench.ingest [--runs 3]`). Each run starts
from a fresh, migrated database, on PostgreSQL and on SQLite; the medians are reported and
written to bench/results/ingest.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from app.core.config import VAR_DIR, Settings
from app.store.db import make_engine, make_session_factory
from bench.common import fresh_database, machine, running_service, write_result
from training.data import movielens
from training.data.importer import BATCH_SIZE, event_batches, import_movielens, item_batch


def time_importer(dataset: movielens.MovieLens, url: str) -> float:
    engine = make_engine(url)
    started = time.perf_counter()
    report = import_movielens(dataset, make_session_factory(engine),
                              Settings(database_url=url), progress=False)
    elapsed = time.perf_counter() - started
    engine.dispose()
    assert report.accepted == len(dataset.ratings), report
    return elapsed


def time_api(dataset: movielens.MovieLens, url: str) -> float:
    items = {"items": [item.model_dump() for item in item_batch(dataset)]}
    batches = [{"events": [e.model_dump(mode="json") for e in batch]}
               for batch in event_batches(dataset.ratings, BATCH_SIZE)]
    with running_service({"DRIFTREC_DATABASE_URL": url, "DRIFTREC_API_KEYS": ""}) as base, \
            httpx.Client(base_url=base, timeout=120) as client:
        client.post("/items", json=items).raise_for_status()
        started = time.perf_counter()
        accepted = 0
        for batch in batches:
            response = client.post("/events", json=batch)
            response.raise_for_status()
            accepted += response.json()["accepted"]
        elapsed = time.perf_counter() - started
    assert accepted == len(dataset.ratings), accepted
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    dataset = movielens.load(VAR_DIR / "cache")
    n_events = len(dataset.ratings)
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for backend in ("postgresql", "sqlite"):
            for path_name, timer in (("importer", time_importer), ("api", time_api)):
                seconds = []
                for _ in range(args.runs):
                    with fresh_database(backend, Path(workdir)) as url:
                        seconds.append(timer(dataset, url))
                median = statistics.median(seconds)
                results[f"{backend}_{path_name}"] = {
                    "events": n_events, "runs_seconds": [round(s, 2) for s in seconds],
                    "median_seconds": round(median, 2),
                    "events_per_second": round(n_events / median),
                }
                print(f"{backend:10s} {path_name:8s} median {median:6.2f} s "
                      f"= {n_events / median:8.0f} events/s  (runs: {seconds})")
    path = write_result("ingest", {
        "benchmark": "ml-100k ingestion (100,000 events, 1,682 items)",
        "command": "make bench-ingest",
        "batch_size": BATCH_SIZE, "runs": args.runs, "machine": machine(), "results": results,
        "goal": "full import under 20 s on PostgreSQL",
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
