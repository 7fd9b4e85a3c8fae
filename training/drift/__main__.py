"""Re-run the drift comparison on a trained sequence model, for one or more seeds.

    python -m training.drift --bundle var/runs/<run>/bundle --seeds 0 1 2 --out var/drift
    python -m training.drift --sequence-state seq.pt --item-text text.pt --seeds 0
    python -m training.drift --bundle ... --kind embedding-shift --seeds 0 1 2

Each seed also fits the held-out sequence model of the "unseen" view (the recipe of
``configs/ml100k.yaml``'s recommender section, on the head-training users; ``--no-unseen``
skips it) and reports every view (seen/unseen users x splice generator A/B).

``--sequence-state`` is a SequenceInterestModel state dict (default SequenceModelConfig) and
``--item-text`` a FloatTensor[N+1, D] of item text embeddings (row 0 zeros). Writes
``drift_seed<k>.json`` (figures) and ``drift_cases_seed<k>.json`` (cases) per seed, and prints
each detector's F1 / alarm rate as mean and spread over the seeds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from app.core.config import get_settings
from app.ml.device import resolve_device
from app.ml.sequence import SequenceInterestModel, SequenceModelConfig
from app.store.db import make_engine
from training.data.sequences import build_user_sequences, build_vocab, leave_one_out
from training.data.store import read_snapshot
from training.drift.heldout import heldout_scorer
from training.drift.pipeline import PROTOCOLS, DriftConfig, train_and_evaluate_drift
from training.recommender import RecommenderConfig
from training.threads import use_usable_cores


def _model(args: argparse.Namespace, n_items: int,
           device: torch.device) -> tuple[SequenceInterestModel, torch.Tensor]:
    if args.bundle:
        from app.ml.loader import load_bundle

        model = load_bundle(args.bundle, str(device)).sequence_model
        assert isinstance(model, SequenceInterestModel)  # the drift trainers read its features
        return model, model.item_text.detach().clone()
    text = torch.load(args.item_text)
    model = SequenceInterestModel(SequenceModelConfig(), n_items, text.shape[1])
    model.set_item_text_embeddings(text)
    model.load_state_dict(torch.load(args.sequence_state, map_location="cpu"))
    return model.to(device), text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--sequence-state", type=Path)
    parser.add_argument("--item-text", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("var/drift"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--kind", help="drift detector kind (default: DriftConfig's)")
    parser.add_argument("--no-unseen", action="store_true", help="skip the unseen view")
    parser.add_argument("--config", type=Path, default=Path("configs/ml100k.yaml"),
                        help="YAML whose drift/recommender sections set the run")
    args = parser.parse_args()
    if not args.bundle and not (args.sequence_state and args.item_text):
        parser.error("give --bundle, or --sequence-state and --item-text")
    use_usable_cores()
    device = resolve_device(args.device)
    engine = make_engine(get_settings().database_url)  # the store is the training source
    try:
        snapshot = read_snapshot(engine)
    finally:
        engine.dispose()
    vocab = build_vocab(snapshot)
    split = leave_one_out(build_user_sequences(snapshot, vocab))
    model, text = _model(args, vocab.n_items, device)
    import yaml

    sections = yaml.safe_load(args.config.read_text()) if args.config.exists() else {}
    config = DriftConfig.tiny() if args.tiny else DriftConfig.from_dict(
        sections.get("drift") or {})
    if args.kind:
        config.kind = args.kind
    rec = RecommenderConfig.from_dict(sections.get("recommender") or {})
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in args.seeds:
        log: dict[str, float] = {}
        heldout = None if args.no_unseen else heldout_scorer(
            split, model.config, vocab.n_items, text, rec.train_config(), config, device, seed,
            progress=False, log=log)
        result = train_and_evaluate_drift(model, text, split.train, config, seed, device,
                                          progress=False, heldout=heldout)
        result.timings.update(log)
        (args.out / f"drift_seed{seed}.json").write_text(json.dumps(result.summary(), indent=1))
        result.save_cases(args.out / f"drift_cases_seed{seed}.json")
        runs.append(result)
        print(f"seed {seed}: threshold {result.threshold:.4f}, alarms/1k target "
              f"{result.target_alarms_per_1k} calibration {result.calibration_alarms_per_1k:.2f}"
              f" evaluation {result.measured_alarms_per_1k:.2f}, {result.seconds:.0f} s")
    for view in PROTOCOLS:
        if view not in runs[0].by_protocol:
            continue
        print(f"\n{view}\n{'detector':<26}{'F1 mean':>9}{'F1 min':>8}{'F1 max':>8}"
              f"{'alarms/1k':>11}")
        for name in runs[0].by_protocol[view]:
            f1 = np.array([r.by_protocol[view][name]["f1"] or 0.0 for r in runs])
            rate = np.mean([r.by_protocol[view][name]["alarms_per_1k"] or 0.0 for r in runs])
            print(f"{name:<26}{f1.mean():9.3f}{f1.min():8.3f}{f1.max():8.3f}{rate:11.2f}")


if __name__ == "__main__":
    main()
