"""A team's own catalogue, end to end, as a new user would run it: the store already holds the
team's items and events (e.g. ``bench.completejourney prepare`` + ``python -m training.data
import``); ``python -m training retrain`` with the default config trains, gates and promotes;
then the promoted version is asked through the API (``POST /recommend``, the path that serves)
for every test user's next item, and its NDCG@10 is compared with the registered figures and
the simple baselines of the same run.

    DRIFTREC_DATABASE_URL=... DRIFTREC_MLFLOW_TRACKING_URI=... \\
        python -m bench.own_catalogue --dataset completejourney-460 [--skip-retrain]

Writes bench/results/own_catalogue.json: ``retrain_seconds``, ``time_budget_seconds``,
``peak_rss_mib`` (the retrain process), ``memory_budget_mib``, ``api_ndcg@10``,
``pop_ndcg@10``, ``repeat_ndcg@10``, ``dataset``, and the registered figures beside them.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import subprocess
import sys
import time
from typing import Any

import httpx

from app.core.config import get_settings
from app.services.models import champion_version
from bench.common import machine, running_service, write_result
from training.config import load_config
from training.data.sequences import build_vocab
from training.pipeline import load_snapshot
from training.recommender import prepare_split

DEFAULT_CONFIG = "configs/default.yaml"


def retrain(config: str, extra: list[str]) -> tuple[float, float, int, float]:
    """Run ``python -m training retrain``: (wall seconds, peak RSS MiB of the child, exit
    status, highest 1-minute load average seen)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "training", "retrain", "--config",
                                config, "--no-progress", *extra])
    load_max = 0.0
    while process.poll() is None:
        load_max = max(load_max, os.getloadavg()[0])
        time.sleep(5)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return seconds, peak, process.returncode, load_max


def api_ndcg(item_ids: list[str], split: Any, window: int) -> tuple[float, float, int]:
    """NDCG@10 and HR@10 of the champion through ``POST /recommend``: each test user's history
    (its last ``window`` events: what the served ranker reads), the request at the test event's
    time, seen items not excluded, no drift tilt (the protocol of the registered figures)."""
    env = {"DRIFTREC_API_KEYS": "", "DRIFTREC_MODEL_POLL_SECONDS": "0"}
    ndcg = hits = 0.0
    with running_service(env, timeout=600) as base, httpx.Client(base_url=base,
                                                                 timeout=120) as client:
        for sequence, target, at in zip(split.test_inputs(), split.test_items,
                                        split.test_times, strict=True):
            items = sequence.items[-window:]
            times = sequence.times[-window:]
            body = {"recent_item_ids": [item_ids[i - 1] for i in items],
                    "timestamps": [float(t) for t in times], "k": 10, "exclude_seen": False,
                    "drift_aware": False, "at": float(at)}
            response = client.post("/recommend", json=body)
            response.raise_for_status()
            ranked = [row["item_id"] for row in response.json()["items"]]
            wanted = item_ids[target - 1]
            if wanted in ranked:
                hits += 1
                ndcg += 1.0 / math.log2(ranked.index(wanted) + 2)
    users = len(split.test_items)
    return ndcg / users, hits / users, users


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="a name for the store's data")
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--skip-retrain", action="store_true",
                        help="only the API check of the current champion")
    parser.add_argument("--retrain-args", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args(argv)
    config = load_config(args.config)
    result: dict[str, Any] = {"benchmark": "a team's own catalogue: retrain, gate, serve",
                              "dataset": args.dataset, "config": args.config,
                              "command": "python -m bench.own_catalogue " + " ".join(
                                  argv if argv is not None else sys.argv[1:])}
    if not args.skip_retrain:
        seconds, peak, status, load_max = retrain(args.config, args.retrain_args)
        result.update({"retrain_seconds": round(seconds, 1), "peak_rss_mib": round(peak, 1),
                       "retrain_exit_status": status, "load_average_max": round(load_max, 2)})
        if status != 0:
            write_result("own_catalogue", result)
            return status
    version = champion_version(get_settings())
    tags = version.tags
    budget = config.run.time_budget_minutes
    result["time_budget_seconds"] = None if budget is None else round(budget * 60.0, 1)
    result["memory_budget_mib"] = round(config.run.memory_gb * 1024.0, 1)
    snapshot = load_snapshot()
    item_ids = build_vocab(snapshot).item_ids
    _, split = prepare_split(snapshot, config.recommender.max_users,
                             config.recommender.basket_holdout)
    from app.ml.loader import load_version

    loaded = load_version(get_settings().mlflow_tracking_uri, "interest-model", "champion",
                          get_settings().model_download_dir, device="cpu")
    window = loaded.bundle.history_window
    started = time.perf_counter()
    ndcg, hr, users = api_ndcg(item_ids, split, window)
    result.update({
        "model_version": str(version.version), "users": users,
        "api_ndcg@10": round(ndcg, 6), "api_hr@10": round(hr, 6),
        "registered_test_ndcg@10": float(tags["test_ndcg_at_10"]),
        "registered_test_hr@10": float(tags["test_hr_at_10"]),
        "pop_ndcg@10": float(tags["baseline_pop_ndcg_at_10_test"]),
        "repeat_ndcg@10": float(tags["baseline_repeat_ndcg_at_10_test"]),
        "cooc_ndcg@10": float(tags["baseline_cooc_ndcg_at_10_test"]),
        "blend": loaded.bundle.blend.to_json() if loaded.bundle.blend is not None else None,
        "api_seconds": round(time.perf_counter() - started, 1), "machine": machine()})
    best = max(result["pop_ndcg@10"], result["repeat_ndcg@10"], result["cooc_ndcg@10"])
    result["ratio_to_best_baseline"] = round(ndcg / best, 4) if best > 0 else None
    result["api_equals_registered"] = abs(ndcg - result["registered_test_ndcg@10"]) < 1e-4
    print(result)
    write_result("own_catalogue", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
