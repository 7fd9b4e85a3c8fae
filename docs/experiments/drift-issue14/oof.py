"""Out-of-fold experiment: scorer M fitted on half the head-training users (T1); head trained on
the other half (T2) through M; calibration and evaluation users through M (all unseen by M)."""
import json, sys, time
from pathlib import Path
import numpy as np, torch
from app.domain.drift import alarm_indices
from app.ml.drift_shift import median_gamma
from app.ml.loader import load_bundle
from training.data.movielens import load
from training.data.sequences import build_user_sequences, build_vocab, leave_one_out
from training.drift.pipeline import DriftConfig, _build_cases, _score, _unspliced
from training.drift.calibration import calibrate_threshold
from training.drift.heldout import heldout_scorer
from training.drift.trainer import case_features, fit_head, head_probabilities, shift_case_features
from app.ml.drift_head import DriftHead
from training.recommender import RecommenderConfig
import yaml
torch.set_num_threads(2)
seed = int(sys.argv[1]); tag = sys.argv[2] if len(sys.argv) > 2 else "x"
bundle = load_bundle("var/pre/ml100k/bundle", "cpu")
full = bundle.sequence_model
text = full.item_text.detach().float()
d = load(Path("var/cache")); v = build_vocab(d.movies)
split = leave_one_out(build_user_sequences(d.ratings, v))
sections = yaml.safe_load(Path("configs/ml100k.yaml").read_text())
config = DriftConfig.from_dict(sections["drift"])
rec = RecommenderConfig.from_dict(sections["recommender"])
t0 = time.time()
groups, cases = _build_cases(split.train, text.numpy(), config, seed)
train_ids = groups["train"]
rng = np.random.default_rng(seed + 17)
perm = rng.permutation(len(train_ids))
t1 = sorted(train_ids[i] for i in perm[: len(perm) // 2])
t2 = set(train_ids) - set(t1)
cache = Path(f"var/exp/oof_M_seed{seed}.pt")
fit = heldout_scorer(split, full.config, v.n_items, text, rec.train_config(), config, torch.device("cpu"), seed)
if cache.exists():
    from app.ml.sequence import SequenceInterestModel
    M = SequenceInterestModel(full.config, v.n_items, text.shape[1]); M.set_item_text_embeddings(text)
    M.load_state_dict(torch.load(cache)); M.eval()
else:
    M = fit(t1); torch.save(M.state_dict(), cache)
print("M fitted", time.time() - t0, flush=True)
cases["train2"] = [c for c in cases["train"] if c.user_a in t2 and (c.user_b is None or c.user_b in t2)]
with torch.no_grad():
    items = M.item_table().detach().float()
gamma = median_gamma([c.items for c in cases["train2"][:500]], items)
views = ("train2", "calibration", "evaluation", "evaluation_b")
F_drift = {g: case_features(M, cases[g], text, torch.device("cpu")) for g in views}
F_shift = {g: shift_case_features(cases[g], items, gamma) for g in views}
print("features", time.time() - t0, len(cases["train2"]), flush=True)
out = {}
keep = [i for i in range(11) if i != 10]
F_ng = {g: [f[:, keep] for f in F_drift[g]] for g in views}
for name, F in (("drift-nogap", F_ng), ("drift-nogap+shift", {g: [torch.cat([a, b], -1) for a, b in zip(F_ng[g], F_shift[g])] for g in views})):
    torch.manual_seed(seed)
    head = DriftHead(F["train2"][0].shape[-1], config.head.hidden_size)
    head = fit_head(head, F["train2"], cases["train2"], config.head, config.min_events, seed, torch.device("cpu"))
    probs = {g: head_probabilities(head, F[g], torch.device("cpu")) for g in views[1:]}
    thr = calibrate_threshold(_unspliced(probs["calibration"], cases["calibration"]), 2.0, 10, 10)
    res = {}
    for g in ("evaluation", "evaluation_b"):
        res[g] = _score([alarm_indices(p, thr, 10, 10) for p in probs[g]], cases[g], 3)
    out[name] = res
    print(name, {g: {k: round(x, 3) for k, x in r.items() if x is not None} for g, r in res.items()}, time.time() - t0, flush=True)
Path(f"var/exp/oof_seed{seed}_{tag}.json").write_text(json.dumps(out, indent=1))
