"""Ray Train (DDP, 2 workers) against one process: same split, seed and epochs; the sequence
trainer only (no encoder fine-tuning).

- default: an ml-100k subset from the files, random item text embeddings;
  `python -m bench.ray_train_compare [--users N] [--epochs E]`
  -> bench/results/ray_train_compare.json
- `--store --config C --bundle B`: the service's store (DRIFTREC_DATABASE_URL), the config's
  recommender hyper-parameters and the fine-tuned item text embeddings of a trained bundle of
  the same snapshot (its item order is checked against the split's);
  `python -m bench.ray_train_compare --store --config configs/ml1m.yaml --bundle
  var/runs/ml1m/bundle --epochs 2 --output ray_train_ml1m` -> bench/results/ray_train_ml1m.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from app.core.config import VAR_DIR
from app.ml.sequence import SequenceInterestModel
from training.data import movielens
from training.evaluate import evaluate_model
from training.recommender import RecommenderConfig, prepare_split
from training.sequence_trainer import train_sequence_model

RESULTS = Path(__file__).resolve().parent / "results"


def store_inputs(config_path: str, bundle_dir: str, epochs: int
                 ) -> tuple[RecommenderConfig, Any, Any, torch.Tensor, dict[str, Any]]:
    """The config, vocabulary, split and item text table for `--store`."""
    from app.core.config import get_settings
    from app.ml.bundle import InterestModelBundle
    from app.store.db import make_engine
    from training.config import load_config
    from training.data.store import read_snapshot

    config = replace(load_config(config_path).recommender, max_epochs=epochs, patience=epochs,
                     train_baseline=False)
    snapshot = read_snapshot(make_engine(get_settings().database_url))
    vocab, split = prepare_split(snapshot, config.max_users)
    bundle = InterestModelBundle.load(Path(bundle_dir), device="cpu")
    if list(bundle.item_ids) != list(vocab.item_ids):
        raise SystemExit("the bundle's items are not the split's (another snapshot?)")
    text = bundle.sequence_model.item_text[: vocab.n_items + 1].clone()
    return config, vocab, split, text, {"snapshot": snapshot.summary(), "config": config_path,
                                        "bundle": bundle_dir}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--store", action="store_true",
                        help="train on the store's snapshot with --config and --bundle's text")
    parser.add_argument("--config", default="configs/ml1m.yaml")
    parser.add_argument("--bundle", default="var/runs/ml1m/bundle")
    parser.add_argument("--output", default="ray_train_compare",
                        help="bench/results/<output>.json")
    parser.add_argument("--runs", default="single,ray",
                        help="which runs; the others are kept from the existing output file")
    args = parser.parse_args()
    import ray

    from training.distributed import train_sequence_model_ray

    described: dict[str, Any]
    if args.store:
        config, vocab, split, text, described = store_inputs(args.config, args.bundle,
                                                             args.epochs)
    else:
        config = replace(RecommenderConfig(), max_users=args.users, max_epochs=args.epochs,
                         patience=args.epochs)
        vocab, split = prepare_split(movielens.load(VAR_DIR / "cache").snapshot(),
                                     config.max_users)
        text = torch.randn(vocab.n_items + 1, 384, generator=torch.Generator().manual_seed(0))
        described = {"users": args.users}
    cpu = torch.device("cpu")

    def model() -> SequenceInterestModel:
        torch.manual_seed(0)
        built = SequenceInterestModel(config.model_config(True), vocab.n_items, text.shape[1])
        built.set_item_text_embeddings(text)
        return built

    out = RESULTS / f"{args.output}.json"
    runs = json.loads(out.read_text())["runs"] if out.exists() else {}
    for name in args.runs.split(","):
        started = time.perf_counter()
        if name == "single":
            result = train_sequence_model(model(), split, config.train_config(), cpu, 0, False)
        else:
            result = train_sequence_model_ray(model(), split, config.train_config(), cpu, 0,
                                              False, workers=args.workers)
            ray.shutdown()
        test = evaluate_model(result.model, split, cpu, parts=("test",))["test"]
        runs[name] = {"seconds": round(time.perf_counter() - started, 1),
                      "best_epoch": result.best_epoch, "val_ndcg@10": round(result.best_val, 4),
                      "test": {k: round(v, 4) for k, v in test.items()},
                      "train_loss": [round(h["train_loss"], 4) for h in result.history]}
        print(name, runs[name])
    out.write_text(json.dumps({**described, "epochs": args.epochs, "workers": args.workers,
                               "load_average": round(os.getloadavg()[0], 2), "runs": runs},
                              indent=2) + "\n")


if __name__ == "__main__":
    main()
