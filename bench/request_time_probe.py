"""How much of a request-time model's score is the request time: one trained model (a
checkpoint of ``bench/quality_ablation.py``) evaluated on the same split with the request made
at different times.

    DRIFTREC_DATABASE_URL=sqlite:///var/ablation/ml100k.db \\
        python -m bench.request_time_probe --config configs/ml100k.yaml --variant request_pos

Rows: ``held-out time`` (the protocol: the validation / test event's own time), ``last event``
(the time of the history's last event, i.e. no knowledge of when the next event comes), ``+1 h``
and ``+30 d`` after the last event (a user coming back later). The held-out items never reach
the model in any row. Writes bench/results/request_time_probe.json (merged per config/variant).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.core.config import PROJECT_ROOT, get_settings
from app.ml.bundle import InterestModelBundle
from app.ml.sequence import SequenceInterestModel
from app.store.db import make_engine
from bench.common import RESULTS
from bench.quality_ablation import KEYS, VARIANTS
from training.config import load_config
from training.data.store import read_snapshot
from training.evaluate import all_metrics, score_sequences
from training.recommender import RecommenderConfig, prepare_split
from training.sequence_trainer import average_states

OFFSETS = {"held-out time": None, "last event": 0.0, "+1 h": 3600.0, "+30 d": 30 * 86_400.0}


def _ablation_model(config: RecommenderConfig, run: str, variant: str, seed: int,
                    n_items: int) -> SequenceInterestModel:
    """The weights the ablation reported: its best epoch, or the top-k mean when kept."""
    workdir = PROJECT_ROOT / "var" / "ablation" / run
    state = torch.load(workdir / f"{variant}-seed{seed}.pt", map_location="cpu",
                       weights_only=False)
    encoder = torch.load(workdir / f"encoder-seed{seed}.pt", map_location="cpu",
                         weights_only=False)
    model = SequenceInterestModel(config.model_config(True), n_items,
                                  encoder["item_text"].shape[1])
    model.set_item_text_embeddings(encoder["item_text"])
    result = json.loads((RESULTS / "quality_ablation.json").read_text())["runs"]
    entry = result[f"{run}/{variant}/seed{seed}"]
    states = [s for _, _, s in state["top"]]
    model.load_state_dict(average_states(states) if entry["averaged"] else states[0])
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/ml100k.yaml")
    parser.add_argument("--variant", default="request_pos", choices=sorted(VARIANTS))
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--bundle", help="score with this bundle's scorer instead of the "
                                         "ablation's checkpoint (e.g. var/runs/ml1m/bundle)")
    args = parser.parse_args()
    training = load_config(args.config)
    config = RecommenderConfig.from_dict({**training.recommender.to_dict(),
                                          **VARIANTS[args.variant]})
    engine = make_engine(get_settings().database_url)
    try:
        snapshot = read_snapshot(engine)
    finally:
        engine.dispose()
    vocab, split = prepare_split(snapshot, config.max_users)
    model = (InterestModelBundle.load(args.bundle).sequence_model if args.bundle
             else _ablation_model(config, training.run.name, args.variant, args.seed,
                                  vocab.n_items))
    model.eval()
    cpu = torch.device("cpu")
    rows: dict[str, Any] = {}
    for name, offset in OFFSETS.items():
        rows[name] = {}
        for part, inputs, targets, held_out in (
                ("val", split.valid_inputs(), split.valid_items, split.valid_times),
                ("test", split.test_inputs(), split.test_items, split.test_times)):
            last = np.array([seq.times[-1] for seq in inputs], dtype=np.float64)
            at = held_out if offset is None else last + offset
            metrics = all_metrics(score_sequences(model, inputs, cpu, at=at), inputs, targets)
            rows[name][part] = {k: round(metrics[k], 6) for k in KEYS}
        print(name, rows[name]["test"])
    path = RESULTS / "request_time_probe.json"
    doc = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    doc["benchmark"] = "request-time model scored with the request at other times"
    doc["runs"][f"{training.run.name}/{args.variant}/seed{args.seed}"] = {
        "command": f"python -m bench.request_time_probe --config {args.config} --variant "
                   f"{args.variant} --seed {args.seed}"
                   + (f" --bundle {args.bundle}" if args.bundle else ""),
        "rows": rows, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Path(path).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
