"""Quick iteration on the embedding-shift head: no baselines, no surprise, model-free features."""
import json, sys, time
from pathlib import Path
import numpy as np, torch
from app.domain.drift import alarm_indices
from app.ml.drift_shift import EmbeddingShiftHead, N_SHIFT_FEATURES, median_gamma
from training.data.movielens import load
from training.data.sequences import build_user_sequences, build_vocab, leave_one_out
from training.drift.pipeline import DriftConfig, _build_cases, _score, _unspliced
from training.drift.calibration import calibrate_threshold, alarms_per_1k
from training.drift.trainer import fit_head, head_probabilities, shift_case_features

torch.set_num_threads(1)
text = torch.load(sys.argv[1]).float()
seeds = [int(s) for s in sys.argv[2].split(",")]
epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 20
dataset = load(Path("var/cache"))
vocab = build_vocab(dataset.movies)
split = leave_one_out(build_user_sequences(dataset.ratings, vocab))
config = DriftConfig()
config.head.epochs = epochs
out = {}
for seed in seeds:
    t0 = time.time()
    groups, cases = _build_cases(split.train, text.numpy(), config, seed)
    gamma = median_gamma([c.items for c in cases["train"][:500]], text)
    feats = {g: shift_case_features(cs, text, gamma) for g, cs in cases.items()}
    head = EmbeddingShiftHead(N_SHIFT_FEATURES, config.head.hidden_size, [gamma])
    torch.manual_seed(seed)
    head = fit_head(head, feats["train"], cases["train"], config.head, config.min_events, seed,
                    torch.device("cpu"))
    probs = {g: head_probabilities(head, f, torch.device("cpu")) for g, f in feats.items()}
    calib = _unspliced(probs["calibration"], cases["calibration"])
    thr = calibrate_threshold(calib, 2.0, 10, 10)
    res = {"gamma": gamma, "threshold": thr, "seconds": time.time() - t0}
    for g in ("evaluation", "evaluation_b"):
        alarms = [alarm_indices(p, thr, 10, 10) for p in probs[g]]
        res[g] = _score(alarms, cases[g], 3)
    out[seed] = res
    print(seed, json.dumps({k: (v if not isinstance(v, dict) else {kk: round(vv, 3) for kk, vv in v.items() if vv is not None}) for k, v in res.items()}), flush=True)
print("mean B f1", np.mean([r["evaluation_b"]["f1"] for r in out.values()]),
      "mean A f1", np.mean([r["evaluation"]["f1"] for r in out.values()]))
