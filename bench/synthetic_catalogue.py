"""A synthetic catalogue of a million items, trained with the default config: does training fit
its memory budget at that size? (A bench run, not a test: it takes most of the time budget.)

    python -m bench.synthetic_catalogue prepare --items 1000000 --out var/data/synthetic-1m
    createdb -h 127.0.0.1 -U postgres synthetic_1m
    export DRIFTREC_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/synthetic_1m
    export DRIFTREC_MLFLOW_TRACKING_URI=sqlite:///$PWD/var/synthetic-mlflow/mlflow.db
    python -m app migrate
    python -m training.data import --items var/data/synthetic-1m/items.parquet \\
        --events var/data/synthetic-1m/events.parquet --no-progress
    python -m bench.synthetic_catalogue run [--retrain-args ...]

``prepare`` writes the import contract's files: ``--items`` products in departments and
product types (categories), each with a short text (department, type, brand, size), and
``--users`` shoppers, each with a few favourite product types whose products they buy in
baskets, often again, and whose favourites change once at a random point (drift). Popularity
inside a product type is Zipf-like, so most of the catalogue is never bought: as in a real
long-tail store, the catalogue is far larger than what the events touch. 2,500 shoppers by
default: every full-ranking evaluation (each epoch's validation, the baselines' and the blend's
grids, the bundle check, the gate) scores users x items cells, about 17 ns each here, so 20,000
shoppers would make each of those dozens of evaluations take about six minutes.

``run`` is ``python -m training retrain --config configs/default.yaml`` on that store (the
default memory and time budgets), then reads the run's quality.json for the printed plan,
the plan's memory estimate and the measured peak; it writes
bench/results/synthetic_catalogue.json: ``items``, ``events``, ``users``, ``retrain_seconds``,
``peak_rss_mib`` (the retrain process), ``memory_budget_mib``, ``within_memory_budget``,
``plan``, ``stage_seconds``, ``time_budget``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from app.core.config import PROJECT_ROOT
from bench.common import machine, write_result
from bench.own_catalogue import DEFAULT_CONFIG, retrain
from training.config import load_config

DEPARTMENTS = ["produce", "dairy", "bakery", "meat", "seafood", "frozen", "pantry", "snacks",
               "beverages", "household", "personal care", "baby", "pet", "deli", "floral",
               "pharmacy", "wine", "beer", "spirits", "garden", "kitchen", "toys", "books",
               "music", "office", "electronics", "clothing", "shoes", "sports", "outdoor",
               "automotive", "hardware", "paint", "lighting", "bedding", "bath", "storage",
               "crafts", "party", "seasonal", "health", "beauty", "vitamins", "coffee", "tea",
               "cereal", "pasta", "sauces", "spices", "candy"]
KINDS = ["classic", "organic", "light", "family", "premium", "value", "fresh", "mini", "large",
         "spicy", "sweet", "plain", "mixed", "natural", "deluxe", "original", "extra", "soft",
         "crisp", "smooth"]
SIZES = ["small", "medium", "large", "1 pack", "2 pack", "6 pack", "12 pack", "250 g", "500 g",
         "1 kg", "1 l", "2 l"]


def item_table(n_items: int, n_types: int, rng: np.random.Generator) -> tuple[pa.Table,
                                                                             np.ndarray]:
    """(items, the product type of each item). Types are department x kind pairs."""
    types = rng.integers(0, n_types, n_items)
    brands = rng.integers(0, 5000, n_items)
    sizes = rng.integers(0, len(SIZES), n_items)
    titles, texts, categories = [], [], []
    for i in range(n_items):
        t = int(types[i])
        department, kind = DEPARTMENTS[t % len(DEPARTMENTS)], KINDS[(t // len(DEPARTMENTS))
                                                                     % len(KINDS)]
        type_name = f"{kind} {department} line {t}"
        brand = f"brand {int(brands[i])}"
        titles.append(f"{kind.title()} {department} {brand}")
        texts.append(f"{department}; {type_name}; {brand}; {SIZES[int(sizes[i])]}")
        categories.append([department, type_name])
    ids = [f"sku{i:07d}" for i in range(n_items)]
    return pa.table({"item_id": ids, "title": titles, "text": texts,
                     "categories": categories}), types


def event_table(types: np.ndarray, n_users: int, events_per_user: int,
                rng: np.random.Generator) -> pa.Table:
    """Each user: 3 favourite types (a popular type is more often a favourite), one replaced
    at a random point; baskets of 1-6 products from the current favourites, a third of them
    bought before by this user."""
    n_types = int(types.max()) + 1
    members = [np.flatnonzero(types == t) for t in range(n_types)]
    type_weight = 1.0 / np.arange(1, n_types + 1) ** 0.8
    type_weight /= type_weight.sum()
    users, items, stamps, event_ids = [], [], [], []
    start = np.datetime64("2026-01-01T00:00:00", "s").astype(np.int64)
    for u in range(n_users):
        favourites = list(rng.choice(n_types, 3, replace=False, p=type_weight))
        length = max(5, int(rng.poisson(events_per_user)))
        switch = int(rng.integers(length // 3, max(length // 3 + 1, 2 * length // 3)))
        t, bought, n = start + int(rng.integers(0, 86_400 * 30)), [], 0
        while n < length:
            if n >= switch and len(favourites) == 3:
                favourites[int(rng.integers(0, 3))] = int(rng.choice(n_types, p=type_weight))
                favourites = [*favourites[:3], -1]  # switched once
            basket = int(rng.integers(1, 7))
            for _ in range(min(basket, length - n)):
                if bought and rng.random() < 0.33:
                    item = bought[int(rng.integers(0, len(bought)))]
                else:
                    pool = members[favourites[int(rng.integers(0, 3))]]
                    rank = min(int(rng.zipf(1.3)) - 1, len(pool) - 1)
                    item = int(pool[rank])
                bought.append(item)
                users.append(u)
                items.append(item)
                stamps.append(t)
                event_ids.append(f"syn:{u}:{n}")
                n += 1
            t += int(rng.integers(3_600, 86_400 * 7))
    return pa.table({"event_id": event_ids,
                     "user_id": [f"shopper{u:06d}" for u in users],
                     "item_id": [f"sku{i:07d}" for i in items],
                     "timestamp": pa.array(np.array(stamps, dtype="datetime64[s]"),
                                           pa.timestamp("s", tz="UTC")),
                     "type": ["purchase"] * len(users)})


def prepare(n_items: int, n_users: int, events_per_user: int, out: Path, seed: int
            ) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    n_types = max(1, min(n_items // 200, len(DEPARTMENTS) * len(KINDS)))
    items, types = item_table(n_items, n_types, rng)
    events = event_table(types, n_users, events_per_user, rng)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(items, out / "items.parquet")
    pq.write_table(events, out / "events.parquet")
    touched = len(np.unique(events["item_id"].to_numpy(zero_copy_only=False)))
    return {"items": items.num_rows, "events": events.num_rows, "users": n_users,
            "items_with_events": touched}


def run(config_path: str, extra: list[str], counts_file: Path, argv: list[str]) -> int:
    config = load_config(config_path)
    seconds, peak, status, load_max = retrain(config_path, extra)
    budget_mib = config.run.memory_gb * 1024.0
    result: dict[str, Any] = {
        "benchmark": "a synthetic catalogue trained with the default config",
        "command": "python -m bench.synthetic_catalogue " + " ".join(argv),
        "config": config_path, "retrain_seconds": round(seconds, 1),
        "retrain_exit_status": status, "peak_rss_mib": round(peak, 1),
        "memory_budget_mib": round(budget_mib, 1), "within_memory_budget": peak <= budget_mib,
        "load_average_max": round(load_max, 2), "machine": machine()}
    if counts_file.exists():
        result.update(json.loads(counts_file.read_text()))
    quality_path = PROJECT_ROOT / config.run.output_dir / config.run.name / "quality.json"
    if status == 0 and quality_path.exists():
        report = json.loads(quality_path.read_text())
        budget = config.run.time_budget_minutes
        result.update({
            "plan": report.get("plan"), "memory": report.get("memory"),
            "stage_seconds": report.get("stage_seconds"),
            "time_budget": report.get("time_budget"),
            "time_budget_seconds": None if budget is None else budget * 60.0,
            "dataset": report.get("dataset"),
            "test_ndcg@10": {name: row.get("ndcg@10")
                             for name, row in report.get("models", {}).items()},
            "baselines": report.get("baselines")})
    print(json.dumps(result, indent=2))
    write_result("synthetic_catalogue", result)
    return status


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench.synthetic_catalogue",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="write items and events files")
    prep.add_argument("--items", type=int, default=1_000_000)
    prep.add_argument("--users", type=int, default=2_500)
    prep.add_argument("--events-per-user", type=int, default=40)
    prep.add_argument("--seed", type=int, default=7)
    prep.add_argument("--out", type=Path, default=Path("var/data/synthetic-1m"))
    go = sub.add_parser("run", help="retrain on the imported store, record plan and memory")
    go.add_argument("--config", default=DEFAULT_CONFIG)
    go.add_argument("--counts", type=Path, default=Path("var/data/synthetic-1m/counts.json"))
    go.add_argument("--retrain-args", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args(argv)
    if args.command == "prepare":
        counts = prepare(args.items, args.users, args.events_per_user, args.out, args.seed)
        (args.out / "counts.json").write_text(json.dumps(counts) + "\n")
        print(json.dumps(counts))
        return 0
    return run(args.config, args.retrain_args, args.counts, argv)


if __name__ == "__main__":
    sys.exit(main())
