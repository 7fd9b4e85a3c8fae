"""How far above buy-again can a ranker go on a store with repeat purchases? Rankers built from
the simple baselines' parts (no sequence model), on the training split the retrain uses:

- ``repeat``: buy-again, log(1 + decayed frequency) with the baseline's tau;
- ``+user_knn``: TIFU-KNN's idea: the user's decayed frequency vector blended with the mean
  of the k most similar users' vectors (cosine), so items the neighbours buy again join the
  list;
- ``+cooc``: item-to-item co-occurrence over the user's recent events (explore);
- popularity as the last tie-break everywhere.

Weights are chosen on validation and reported on test (the honest figure); the best weights
*on test* are printed beside it as a ceiling (what no validation choice can beat), labelled.

    DRIFTREC_DATABASE_URL=... python -m bench.repeat_explore --dataset completejourney-460

Writes bench/results/repeat_explore.json.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from bench.common import machine, write_result
from training import baselines
from training.config import load_config
from training.data.sequences import LeaveOneOutSplit, UserSequence
from training.evaluate import all_metrics
from training.pipeline import load_snapshot
from training.recommender import prepare_split

KNN_SIZES = (25, 100, 400)
KNN_SHARES = (0.0, 0.25, 0.5, 0.75)  # weight of the neighbours' mean in the user vector
COOC_WEIGHTS = (0.0, 0.05, 0.2, 1.0)
COOC_WINDOW = 10


def user_knn(own: sp.csr_matrix, reference: sp.csr_matrix, k: int) -> np.ndarray:
    """Mean of the ``k`` most similar reference rows (cosine) for each row of ``own``: dense
    [U, N + 1]. A user is not their own neighbour when both matrices hold them (same row)."""
    def unit(m: sp.csr_matrix) -> sp.csr_matrix:
        norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1))).ravel()
        return sp.diags(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)) @ m

    neighbours = unit(reference)
    similarity = (unit(own) @ neighbours.T).toarray()
    if own.shape[0] == reference.shape[0]:
        np.fill_diagonal(similarity, -1.0)
    k = min(k, reference.shape[0] - 1)
    top = np.argpartition(-similarity, k, axis=1)[:, :k]
    weights = np.zeros_like(similarity)
    np.put_along_axis(weights, top, 1.0 / k, axis=1)
    return np.asarray(sp.csr_matrix(weights) @ neighbours.toarray())


def scores_for(parts: dict[str, np.ndarray], share: float, cooc_weight: float,
               prior: np.ndarray) -> torch.Tensor:
    own = parts["repeat"]
    vector = (1.0 - share) * own / np.maximum(own.max(axis=1, keepdims=True), 1e-12)
    if share > 0:
        vector = vector + share * parts["knn"]
    scores = vector + cooc_weight * parts["cooc"] + 1e-6 * prior / len(prior)
    out = torch.from_numpy(scores.astype(np.float32))
    out[:, 0] = -math.inf
    return out


def build_parts(split: LeaveOneOutSplit, inputs: Sequence[UserSequence], n_items: int,
                tau: float, k: int, similarity: sp.csr_matrix) -> dict[str, np.ndarray]:
    own = baselines.repeat_matrix(baselines.flatten(inputs), n_items, tau)
    reference = baselines.repeat_matrix(baselines.flatten(split.train), n_items, tau)
    cooc = (baselines.recent_matrix(baselines.flatten(inputs), n_items, COOC_WINDOW)
            @ similarity).toarray()
    cooc /= np.maximum(cooc.max(axis=1, keepdims=True), 1e-12)
    dense_own = np.log1p(own.toarray())
    knn = user_knn(own, reference, k)
    knn /= np.maximum(knn.max(axis=1, keepdims=True), 1e-12)
    return {"repeat": dense_own, "knn": knn, "cooc": cooc}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.repeat_explore", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--config", default="configs/default.yaml")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    config = load_config(args.config)
    snapshot = load_snapshot()
    vocab, split = prepare_split(snapshot, config.recommender.max_users,
                                 config.recommender.basket_holdout)
    n_items = vocab.n_items
    simple = baselines.evaluate_baselines(split, n_items)
    tau = float(simple["repeat"].value)
    prior = baselines.popularity_rank(baselines.item_counts(split.train, n_items))
    similarity = baselines.cooc_matrix(split.train, n_items, COOC_WINDOW)
    data = {"val": (split.valid_inputs(), split.valid_items),
            "test": (split.test_inputs(), split.test_items)}
    grid: dict[str, dict[str, float]] = {}
    for k in KNN_SIZES:
        parts = {name: build_parts(split, inputs, n_items, tau, k, similarity)
                 for name, (inputs, _) in data.items()}
        for share, weight in itertools.product(KNN_SHARES, COOC_WEIGHTS):
            key = f"k={k},knn_share={share:g},cooc={weight:g}"
            grid[key] = {name: all_metrics(scores_for(parts[name], share, weight, prior),
                                           list(inputs), targets)["ndcg@10"]
                         for name, (inputs, targets) in data.items()}
    by_val = max(grid, key=lambda key: grid[key]["val"])
    by_test = max(grid, key=lambda key: grid[key]["test"])
    repeat_test = simple["repeat"].metrics["test"]["ndcg@10"]
    repeat_val = simple["repeat"].metrics["val"]["ndcg@10"]
    best_simple_test = max(r.metrics["test"]["ndcg@10"] for r in simple.values())
    result: dict[str, Any] = {
        "benchmark": "rankers from buy-again, user-kNN and co-occurrence (no sequence model)",
        "dataset": args.dataset, "command": "python -m bench.repeat_explore " + " ".join(
            argv if argv is not None else sys.argv[1:]),
        "users": len(split.train), "items": n_items, "repeat_tau": tau,
        "baselines_ndcg@10": {name: {part: round(r.metrics[part]["ndcg@10"], 6)
                                     for part in ("val", "test")}
                              for name, r in simple.items()},
        "chosen_on_val": {"setting": by_val, **{p: round(v, 6) for p, v in
                                                grid[by_val].items()},
                          "test_vs_repeat": round(grid[by_val]["test"] / repeat_test, 4),
                          "test_vs_best_simple": round(grid[by_val]["test"]
                                                       / best_simple_test, 4),
                          "val_vs_repeat": round(grid[by_val]["val"] / repeat_val, 4)},
        "ceiling_chosen_on_test": {"setting": by_test, **{p: round(v, 6) for p, v in
                                                          grid[by_test].items()},
                                   "test_vs_best_simple": round(grid[by_test]["test"]
                                                                / best_simple_test, 4)},
        "grid": {key: {p: round(v, 6) for p, v in values.items()}
                 for key, values in grid.items()},
        "seconds": round(time.perf_counter() - started, 1), "machine": machine()}
    print({k: v for k, v in result.items() if k != "grid"})
    write_result("repeat_explore", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
