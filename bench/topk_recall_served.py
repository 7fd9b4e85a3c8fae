"""Recall@10 of the served top-k index against the exact scan, on a served large catalogue.

`python -m bench.topk_recall_served --database driftrec_catalogue_1m` →
bench/results/topk_recall_served.json. The database is the one `bench.large_catalogue
--database NAME` prepared and kept (ml-100k users, a million synthetic cold-start items with
their stored rows); the champion comes from this checkout's registry.

In one process: the champion is loaded over that catalogue the way a worker loads it, a faiss
index is built over its item vectors, and for each sampled user the ranking that
`/recommend/{user}` computes (its history, exclusions, drift finding and tilt) is taken with
the exact scan and with the index at several candidate counts, with and without the drift
tilt. The user's drift finding is computed once and shared by every variant (it costs about a
second a user at this size; the rankings cost milliseconds).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from typing import Any

import numpy as np

from app.core.config import Settings
from app.services.model_manager import ModelManager
from app.services.recommender import Recommender
from app.services.served_topk import build_served_topk
from app.services.user_history import load_history
from app.store.db import make_engine, make_session_factory
from bench.common import PG_ADMIN_URL, machine, write_result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.topk_recall_served")
    parser.add_argument("--database", required=True)
    parser.add_argument("--users", type=int, default=150)
    parser.add_argument("--candidates", default="200,1000")
    parser.add_argument("--nprobes", default="32,128,512",
                        help="IVF lists scanned per query (DRIFTREC_TOPK_NPROBE), each with "
                        "the first candidate count; the other counts at the first nprobe")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    url = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    settings = Settings(database_url=f"{url}/{args.database}", model_poll_seconds=0)
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    started = time.perf_counter()
    manager = ModelManager(settings, factory, with_challenger=False)
    manager.reload()
    served = manager.current
    load_seconds = time.perf_counter() - started
    started = time.perf_counter()
    index = build_served_topk(settings.model_copy(update={"topk_index": "faiss"}),
                              served.bundle)
    build_seconds = time.perf_counter() - started
    indexed = Recommender(dataclasses.replace(served.model, topk=index), settings)
    counts = [int(c) for c in args.candidates.split(",")]
    probes = [int(p) for p in args.nprobes.split(",")]
    rng = np.random.default_rng(args.seed)
    users = [str(u) for u in rng.permutation(np.arange(1, 944))[: args.users]]
    hits: dict[str, list[float]] = {}
    times: dict[str, list[float]] = {}
    drifted = 0
    with factory() as session:
        for user in users:
            history = load_history(session, user, 200)
            finding = served.find_drift(history, user)
            drifted += finding.change is not None
            exclude = set(history.item_ids)
            for tilt in (False, True):
                used = finding if tilt else None
                variants: dict[str, Any] = {"exact": (served, 0, None)}
                variants.update({f"faiss nprobe {probes[0]}, {c} candidates":
                                 (indexed, c, probes[0]) for c in counts})
                variants.update({f"faiss nprobe {p}, {counts[0]} candidates":
                                 (indexed, counts[0], p) for p in probes[1:]})
                answers: dict[str, list[str]] = {}
                for name, (model, candidates, nprobe) in variants.items():
                    if nprobe is not None:
                        index.index.nprobe = nprobe  # type: ignore[union-attr]
                    begun = time.perf_counter()
                    chosen, _, _ = model.rank_items(
                        item_ids=history.item_ids, timestamps=history.timestamps,
                        k=10, exclude=exclude, strength=settings.drift_strength,
                        finding=used, explain_window=settings.short_term_events,
                        candidates=candidates or 200)
                    key = f"{name}, {'drift tilt' if tilt else 'model only'}"
                    times.setdefault(key, []).append((time.perf_counter() - begun) * 1000)
                    answers[name] = [c[0] for c in chosen]
                exact = set(answers["exact"])
                for name in variants:
                    key = f"{name}, {'drift tilt' if tilt else 'model only'}"
                    hits.setdefault(key, []).append(len(exact & set(answers[name])) / 10)
    engine.dispose()
    rows = [{"variant": key, "recall_at_10": round(float(np.mean(hits[key])), 4),
             "rank_items_p50_ms": round(statistics.median(times[key]), 2)} for key in hits]
    for row in rows:
        print(row)
    write_result("topk_recall_served", {
        "benchmark": "recall@10 of the served faiss index against the exact scan, the rankings "
                     "/recommend computes, over a million-item synthetic catalogue",
        "command": "python -m bench.topk_recall_served " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"), "machine": machine(), "users": len(users),
        "users_with_a_detected_change": drifted,
        "load_seconds": round(load_seconds, 1), "index_build_seconds": round(build_seconds, 1),
        "rows": rows,
        "note": "drift tilt: the user's drift finding as /recommend uses it (only users with a "
                "detected change get a tilt; the others rank as 'model only')"})


if __name__ == "__main__":
    main()
