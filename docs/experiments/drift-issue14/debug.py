import sys
from pathlib import Path
import numpy as np, torch
from sklearn.metrics import roc_auc_score
from app.ml.drift_shift import SHIFT_FEATURES, median_gamma
from training.data.movielens import load
from training.data.sequences import build_user_sequences, build_vocab, leave_one_out
from training.drift.pipeline import DriftConfig, _build_cases
from training.drift.trainer import shift_case_features
torch.set_num_threads(1)
text = torch.load(sys.argv[1]).float()
d = load(Path("var/cache")); v = build_vocab(d.movies)
split = leave_one_out(build_user_sequences(d.ratings, v))
config = DriftConfig(); config.max_users = int(sys.argv[2]) if len(sys.argv) > 2 else 400
groups, cases = _build_cases(split.train, text.numpy(), config, 0)
for g in ("evaluation", "evaluation_b"):
    f = shift_case_features(cases[g], text, median_gamma([c.items for c in cases[g][:300]], text))
    X = torch.cat(f).numpy(); print(g, "nan", np.isnan(X).sum())
    y = np.concatenate([c.labels(3) for c in cases[g]])
    pos = np.concatenate([np.arange(len(c.items)) for c in cases[g]])
    keep = pos >= 9
    for j, name in enumerate(SHIFT_FEATURES):
        print(f"  {name:20s} auc {roc_auc_score(y[keep], X[keep, j]):.3f}  mean {X[keep, j].mean():.3f}")
