"""Ray Train (DDP, 2 workers) against one process on an ml-100k subset: same split, seed and
epochs; the sequence trainer only (item text embeddings random: no encoder fine-tuning).
`python -m bench.ray_train_compare [--users N] [--epochs E]` -> bench/results/ray_train_compare.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from app.core.config import VAR_DIR
from app.ml.sequence import SequenceInterestModel
from training.data import movielens
from training.evaluate import evaluate_model
from training.recommender import RecommenderConfig, prepare_split
from training.sequence_trainer import train_sequence_model

OUT = Path(__file__).resolve().parent / "results" / "ray_train_compare.json"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    import ray

    from training.distributed import train_sequence_model_ray

    config = replace(RecommenderConfig(), max_users=args.users, max_epochs=args.epochs,
                     patience=args.epochs)
    vocab, split = prepare_split(movielens.load(VAR_DIR / "cache").snapshot(), config.max_users)
    cpu = torch.device("cpu")

    def model() -> SequenceInterestModel:
        torch.manual_seed(0)
        built = SequenceInterestModel(config.model_config(True), vocab.n_items, 384)
        built.set_item_text_embeddings(torch.randn(vocab.n_items + 1, 384,
                                                   generator=torch.Generator().manual_seed(0)))
        return built

    runs = {}
    for name in ("single", "ray"):
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
    OUT.write_text(json.dumps({"users": args.users, "epochs": args.epochs,
                               "workers": args.workers, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
