"""Sequence-model ablation on a store snapshot: one fine-tuned encoder per seed, reused by every
variant, then only our sequence model trained and evaluated per (variant, seed), with the split,
trainer and evaluation code of ``python -m training train``.

    DRIFTREC_DATABASE_URL=sqlite:///var/ablation/ml100k.db \\
        python -m training.data import-movielens --variant 100k        # once
    OMP_NUM_THREADS=1 DRIFTREC_DATABASE_URL=sqlite:///var/ablation/ml100k.db \\
        python -m bench.quality_ablation --variants base request --seeds 2020

Variants are named settings over ``--config`` (``VARIANTS``, or ``--name N --set k=v ...`` for
one of your own). The encoder's fine-tuned weights and item embeddings are kept under
``var/ablation/<config name>/`` per seed (its setting is checked before reuse), so a variant
costs only its sequence-model training. Each result is merged into ``--out`` (keyed by
variant and seed) as soon as it is measured: validation picks, test reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from app.core.config import PROJECT_ROOT, get_settings
from app.ml.device import resolve_device
from app.ml.sequence import SequenceInterestModel
from bench.common import RESULTS, machine
from training.config import load_config
from training.data.store import read_snapshot
from training.evaluate import evaluate_model
from training.recommender import RecommenderConfig, embed_items, prepare_split
from training.sequence_trainer import train_sequence_model

VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "event": {"time_bias": "event"},
    "event_pos": {"time_bias": "event", "position_bias": True},
    "request": {"time_bias": "request"},
    "request_pos": {"time_bias": "request", "position_bias": True},
    "pos": {"position_bias": True},
}
KEYS = ("ndcg@10", "hr@10", "mrr@10", "ndcg@10_masked", "hr@10_masked")


def _merge(path: Path, key: str, entry: dict[str, Any]) -> None:
    doc = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    doc["benchmark"] = "sequence-model ablation (bench/quality_ablation.py)"
    doc["runs"][key] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def table(path: Path) -> str:
    """The results file as a markdown table: a row per (config, variant, seed) and the mean of
    each variant run on several seeds."""
    runs = json.loads(path.read_text())["runs"]
    lines = ["| config / variant | seed | val NDCG@10 | val NDCG@10 masked | test NDCG@10 | "
             "test HR@10 | test NDCG@10 masked | test HR@10 masked | best epoch / run | "
             "seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[str, list[dict[str, Any]]] = {}
    for key, run in sorted(runs.items()):
        groups.setdefault(key.rsplit("/", 1)[0], []).append(run)
    for name, group in groups.items():
        rows = sorted(group, key=lambda r: r["seed"])
        for run in rows:
            val, test = run["val"], run["test"]
            lines.append(f"| {name} | {run['seed']} | {val['ndcg@10']:.4f} | "
                         f"{val['ndcg@10_masked']:.4f} | {test['ndcg@10']:.4f} | "
                         f"{test['hr@10']:.4f} | "
                         f"{test['ndcg@10_masked']:.4f} | {test['hr@10_masked']:.4f} | "
                         f"{run['best_epoch']} / {run['epochs']} | {run['train_seconds']:.0f} |")
        if len(rows) > 1:
            def mean(part: str, key: str, rows: list[dict[str, Any]] = rows) -> float:
                return sum(r[part][key] for r in rows) / len(rows)
            lines.append(f"| {name} | mean of {len(rows)} | {mean('val', 'ndcg@10'):.4f} | "
                         f"{mean('val', 'ndcg@10_masked'):.4f} | "
                         f"{mean('test', 'ndcg@10'):.4f} | {mean('test', 'hr@10'):.4f} | "
                         f"{mean('test', 'ndcg@10_masked'):.4f} | "
                         f"{mean('test', 'hr@10_masked'):.4f} | | |")
    return "\n".join(lines)


def run_variant(base: RecommenderConfig, name: str, overrides: dict[str, Any], seed: int,
                snapshot: Any, device: torch.device, workdir: Path) -> dict[str, Any]:
    """Train our sequence model of ``base`` + ``overrides`` with ``seed``; its metrics."""
    config = RecommenderConfig.from_dict({**base.to_dict(), **overrides})
    vocab, split = prepare_split(snapshot, config.max_users)
    start = time.perf_counter()
    encoder, item_text, _ = embed_items(config, snapshot, split, device, seed, progress=False,
                                        checkpoint=workdir / f"encoder-seed{seed}.pt",
                                        log=print)
    encoder_s = time.perf_counter() - start
    torch.manual_seed(seed)  # as train_recommender: the same initial weights per seed
    model = SequenceInterestModel(config.model_config(True), vocab.n_items, encoder.dim)
    model.set_item_text_embeddings(item_text)
    result = train_sequence_model(model, split, config.train_config(), device, seed,
                                  progress=False, name="ours",
                                  checkpoint=workdir / f"{name}-seed{seed}.pt", log=print)
    metrics = evaluate_model(result.model, split, device)
    return {
        "variant": name, "seed": seed, "overrides": overrides,
        "val": {k: round(metrics["val"][k], 6) for k in KEYS},
        "test": {k: round(metrics["test"][k], 6) for k in KEYS},
        "best_val_selected": round(result.best_val, 6), "best_epoch": result.best_epoch,
        "epochs": len(result.history), "averaged": result.averaged,
        # the epochs' own seconds (a resumed run counts those of the run it continues), and
        # this process's wall time
        "train_seconds": round(sum(h["seconds"] for h in result.history), 1),
        "wall_seconds": round(result.seconds, 1), "encoder_seconds": round(encoder_s, 1),
        # the training step as it ran: "train" holds what was asked for ("auto" may be fp32)
        "precision": result.precision, "compiled": result.compiled,
        "model": dataclasses.asdict(config.model_config(True)),
        "train": dataclasses.asdict(config.train_config()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/ml100k.yaml")
    parser.add_argument("--variants", nargs="*", default=[], choices=sorted(VARIANTS))
    parser.add_argument("--name", help="a variant of your own, set by --set")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="recommender overrides for --name (values parsed as YAML)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[2020])
    parser.add_argument("--max-epochs", type=int,
                        help="override max_epochs (a variant's checkpoint resumes: a longer "
                             "run continues a shorter one; its result is keyed <variant>-e<N>)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(RESULTS / "quality_ablation.json"))
    parser.add_argument("--table", action="store_true", help="print --out as a table, only")
    args = parser.parse_args()
    if args.table:
        print(table(Path(args.out)))
        return
    variants = {name: VARIANTS[name] for name in args.variants}
    if args.name:
        variants[args.name] = {k: yaml.safe_load(v)
                               for k, v in (item.split("=", 1) for item in args.set)}
    if not variants:
        parser.error("name at least one variant (--variants or --name)")
    training = load_config(args.config)
    workdir = PROJECT_ROOT / "var" / "ablation" / training.run.name
    device = resolve_device(args.device)
    settings = get_settings()
    from app.store.db import make_engine

    engine = make_engine(settings.database_url)
    try:
        snapshot = read_snapshot(engine)
    finally:
        engine.dispose()
    command = "python -m bench.quality_ablation " + shlex.join(sys.argv[1:])
    for seed in args.seeds:
        for name, overrides in variants.items():
            if args.max_epochs is not None:
                overrides = {**overrides, "max_epochs": args.max_epochs}
            entry = run_variant(training.recommender, name, overrides, seed, snapshot, device,
                                workdir)
            if args.max_epochs is not None:
                name = f"{name}-e{args.max_epochs}"
            entry.update({"command": command, "config": args.config,
                          "snapshot": snapshot.summary(), "machine": machine(),
                          "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            print(json.dumps({k: entry[k] for k in ("variant", "seed", "val", "test",
                                                    "best_epoch", "train_seconds")}))
            _merge(Path(args.out), f"{training.run.name}/{name}/seed{seed}", entry)


if __name__ == "__main__":
    main()
