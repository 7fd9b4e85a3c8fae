"""Simple baselines every training run fits and evaluates beside the model, and the floor of
the promotion gate: a model that ranks worse than one of them should not serve.

- ``pop``: the most-consumed items of the training parts.
- ``repeat`` ("buy again"): the user's own past items, each scored by
  ``sum over the user's events of that item of exp(-age / tau)``, where ``age`` counts the
  baskets (distinct timestamps) between that event and the user's latest one, so the order
  inside a basket never matters; ``tau`` (``inf``: plain frequency) is tuned on validation.
- ``cooc``: item-to-item co-occurrence. ``C[i, j]`` counts, in the training parts, how often
  ``j`` comes at most ``window`` events after ``i`` in one user's sequence (both ways when the
  two share a timestamp: inside a basket the order is the ingestion order, not the user's),
  normalised as item-kNN (cosine: ``C[i, j] / sqrt(n_i n_j)``, ``n`` the item counts); a
  user's score of ``j`` sums ``S[h, j]`` over their last ``window`` items ``h``. ``window`` is
  tuned on validation.

Every score is broken by popularity, then by item index (the lower first): the evaluation
counts the items scored strictly higher than the target, so a baseline leaving most of the
catalogue at a tied zero would be credited with ranks it never gave. Items with a positive
personal score come first, in (score, popularity) order, then every other item in popularity
order. The scores are small integers (exact in float32, which the metrics use).

They are evaluated on the model's split with the model's evaluation code
(``training.evaluate.all_metrics``: full ranking, unmasked and history-masked), from the same
histories (``split.valid_inputs()`` / ``split.test_inputs()``), fitted on the training parts
only, and scored in chunks of users so that a large catalogue never needs a users x items
matrix of everything at once. Plain numpy / scipy.sparse: no model, no GPU, seconds on ML-1M.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from training.data.sequences import LeaveOneOutSplit, UserSequence
from training.evaluate import Metrics, all_metrics

TAUS: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0, 100.0, math.inf)  # in baskets
WINDOWS: tuple[int, ...] = (1, 2, 5, 10, 20)  # in events
NAMES = ("pop", "repeat", "cooc")
CHUNK_CELLS = 4_000_000  # users x items scored at once (16 MB of float32; a few copies live;
# larger chunks measured slower: the dense sort and the copies fall out of cache)


@dataclass(frozen=True)
class BaselineResult:
    name: str
    knob: str | None  # the one tuned setting ("tau", "window"), None for pop
    value: float | None  # its value chosen on validation
    metrics: dict[str, Metrics]  # "val" / "test" -> all_metrics keys
    grid: dict[str, float] = field(default_factory=dict)  # knob value -> val NDCG@10

    @property
    def label(self) -> str:
        """e.g. ``repeat (tau=3)``: the name with the chosen knob, for messages."""
        if self.knob is None or self.value is None:
            return self.name
        return f"{self.name} ({self.knob}={format_value(self.value)})"

    def val_ndcg(self) -> float:
        return float(self.metrics["val"]["ndcg@10"])


def format_value(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:g}"


# --------------------------------------------------------------------------- building blocks
@dataclass(frozen=True)
class FlatEvents:
    """Sequences concatenated: row (user position), item, time, and age in baskets (the
    number of distinct timestamps after the event in its row; 0 for the latest basket)."""

    rows: np.ndarray  # int64 [E]
    items: np.ndarray  # int64 [E]
    times: np.ndarray  # float64 [E]
    basket_age: np.ndarray  # int64 [E]
    n_rows: int


def flatten(sequences: Sequence[UserSequence]) -> FlatEvents:
    lengths = np.fromiter((len(s.items) for s in sequences), np.int64, len(sequences))
    rows = np.repeat(np.arange(len(sequences), dtype=np.int64), lengths)
    if len(rows) == 0:
        empty = np.zeros(0, np.int64)
        return FlatEvents(empty, empty, np.zeros(0), empty, len(sequences))
    items = np.concatenate([s.items for s in sequences]).astype(np.int64)
    times = np.concatenate([s.times for s in sequences]).astype(np.float64)
    new_basket = np.ones(len(rows), bool)
    new_basket[1:] = (rows[1:] != rows[:-1]) | (times[1:] != times[:-1])
    basket = np.cumsum(new_basket) - 1
    last_of_row = np.full(len(sequences), -1, np.int64)
    np.maximum.at(last_of_row, rows, basket)
    return FlatEvents(rows, items, times, last_of_row[rows] - basket, len(sequences))


def item_counts(sequences: Sequence[UserSequence], n_items: int) -> np.ndarray:
    """Events per item index: float64 [N + 1] (index 0, padding, is 0)."""
    if not sequences:
        return np.zeros(n_items + 1)
    return np.bincount(np.concatenate([s.items for s in sequences]),
                       minlength=n_items + 1).astype(np.float64)


def popularity_rank(counts: np.ndarray) -> np.ndarray:
    """Each item's place in (count, lower index first) order: float64 [N + 1], 0 = least
    popular, all distinct, so it breaks every tie."""
    n = len(counts)
    order = np.lexsort((-np.arange(n), counts))  # ascending count; equal counts: higher index
    rank = np.empty(n, np.float64)
    rank[order] = np.arange(n, dtype=np.float64)
    return rank


def ranked_scores(primary: sp.csr_matrix, prior: np.ndarray) -> torch.Tensor:
    """Scores ordering items by (primary score, then ``prior``): FloatTensor[U, N + 1],
    column 0 = -inf. ``primary``: non-negative, sparse [U, N + 1]; its positive entries rank
    above every other item. Values are integers up to 2 (N + 1): exact in float32."""
    primary = primary.tocsr(copy=True)
    primary.eliminate_zeros()
    n_rows, n_columns = primary.shape
    if primary.nnz > n_rows * n_columns // 16:
        scores = _dense_ranks(primary, prior)
    else:
        scores = np.broadcast_to(prior.astype(np.float32), (n_rows, n_columns)).copy()
        coo = primary.tocoo()
        if coo.nnz:
            order = np.lexsort((prior[coo.col], coo.data, coo.row))  # by row, score, prior
            rows, cols = coo.row[order], coo.col[order]
            within = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
            scores[rows, cols] = (n_columns + within).astype(np.float32)
    out = torch.from_numpy(scores)
    out[:, 0] = -math.inf
    return out


def _dense_ranks(primary: sp.csr_matrix, prior: np.ndarray) -> np.ndarray:
    """``ranked_scores`` for a dense-ish ``primary``: each item's place in its row's
    (score, prior) order, 0 = last; a stable sort by score of the columns in prior order
    (cheaper than sorting millions of sparse entries by three keys)."""
    by_prior = torch.from_numpy(np.argsort(prior, kind="stable"))
    dense = torch.from_numpy(primary.toarray())[:, by_prior]
    _, order = torch.sort(dense, dim=1, stable=True)
    places = torch.empty(dense.shape, dtype=torch.float32)
    places.scatter_(1, by_prior[order], torch.arange(dense.shape[1], dtype=torch.float32)
                    .expand_as(places).contiguous())
    return places.numpy()


# --------------------------------------------------------------------------- the baselines
def repeat_matrix(flat: FlatEvents, n_items: int, tau: float) -> sp.csr_matrix:
    """[U, N + 1]: sum of exp(-basket age / tau) over each user's events of each item."""
    weights = (np.ones(len(flat.items)) if math.isinf(tau)
               else np.exp(-flat.basket_age / float(tau)))
    return sp.csr_matrix((weights, (flat.rows, flat.items)), shape=(flat.n_rows, n_items + 1))


def cooc_matrices(train: Sequence[UserSequence], n_items: int, windows: Sequence[int]
                  ) -> dict[int, sp.csr_matrix]:
    """Item-kNN similarity [N + 1, N + 1] from the training parts for each of ``windows``:
    pairs (i, j) with j at most ``window`` events after i (both ways within one timestamp),
    divided by sqrt(n_i n_j). The pairs of each offset are counted once, cumulatively."""
    flat = flatten(train)
    size = n_items + 1
    norm = np.sqrt(item_counts(train, n_items))
    scale = sp.diags(np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0))
    counts = sp.csr_matrix((size, size))
    wanted = set(windows)
    out = {}
    for offset in range(1, max(windows, default=0) + 1):
        same_user = flat.rows[offset:] == flat.rows[:-offset]
        a, b = flat.items[:-offset][same_user], flat.items[offset:][same_user]
        tied = (flat.times[offset:] == flat.times[:-offset])[same_user]
        src, dst = np.concatenate([a, b[tied]]), np.concatenate([b, a[tied]])
        counts = counts + sp.csr_matrix((np.ones(len(src)), (src, dst)), shape=(size, size))
        if offset in wanted:
            out[offset] = (scale @ counts @ scale).tocsr()
    return out


def cooc_matrix(train: Sequence[UserSequence], n_items: int, window: int) -> sp.csr_matrix:
    """``cooc_matrices`` for one window."""
    return cooc_matrices(train, n_items, [window])[window]


def recent_matrix(flat: FlatEvents, n_items: int, window: int) -> sp.csr_matrix:
    """[U, N + 1]: how often each item is among the user's last ``window`` events."""
    ends = np.searchsorted(flat.rows, np.arange(flat.n_rows), side="right")
    from_end = ends[flat.rows] - np.arange(len(flat.rows))  # 1 = the latest event
    keep = from_end <= window
    return sp.csr_matrix((np.ones(int(keep.sum())), (flat.rows[keep], flat.items[keep])),
                         shape=(flat.n_rows, n_items + 1))


# --------------------------------------------------------------------------- evaluation
def chunked_metrics(primary: sp.csr_matrix, prior: np.ndarray, inputs: Sequence[UserSequence],
                    targets: np.ndarray, chunk: int | None = None) -> Metrics:
    """``all_metrics`` of ``ranked_scores(primary, prior)``, computed ``chunk`` users at a
    time (default: as many as fit ``CHUNK_CELLS``; the metrics are means over users, so chunk
    means weighted by chunk size give the same figures)."""
    chunk = chunk or max(1, CHUNK_CELLS // len(prior))
    totals: dict[str, float] = {}
    n = len(inputs)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        scores = ranked_scores(primary[start:stop], prior)
        part = all_metrics(scores, list(inputs[start:stop]), targets[start:stop])
        for key, value in part.items():
            totals[key] = totals.get(key, 0.0) + value * (stop - start)
    return {key: value / n for key, value in totals.items()} if n else {}


def _parts(split: LeaveOneOutSplit) -> dict[str, tuple[list[UserSequence], np.ndarray]]:
    return {"val": (split.valid_inputs(), split.valid_items),
            "test": (split.test_inputs(), split.test_items)}


def _tuned(name: str, knob: str, grid: Sequence[float], split: LeaveOneOutSplit,
           primary_for: Any, prior: np.ndarray) -> BaselineResult:
    """Evaluate ``primary_for(value, part, inputs)`` on validation for each grid value; the
    best (first on ties) is then evaluated on test."""
    parts = _parts(split)
    val_inputs, val_targets = parts["val"]
    by_value: dict[float, Metrics] = {}
    for value in grid:
        by_value[value] = chunked_metrics(primary_for(value, val_inputs), prior, val_inputs,
                                          val_targets)
    best = max(grid, key=lambda v: (by_value[v].get("ndcg@10", 0.0), -grid.index(v)))
    test_inputs, test_targets = parts["test"]
    test = chunked_metrics(primary_for(best, test_inputs), prior, test_inputs, test_targets)
    return BaselineResult(name, knob, float(best), {"val": by_value[best], "test": test},
                          {format_value(v): float(by_value[v].get("ndcg@10", 0.0))
                           for v in grid})


def evaluate_baselines(split: LeaveOneOutSplit, n_items: int,
                       taus: Sequence[float] = TAUS, windows: Sequence[int] = WINDOWS
                       ) -> dict[str, BaselineResult]:
    """Fit pop, repeat and cooc on the training parts of ``split`` and evaluate them on its
    validation and test targets (knobs tuned on validation): name -> result."""
    counts = item_counts(split.train, n_items)
    prior = popularity_rank(counts)
    empty = sp.csr_matrix((len(split.train), n_items + 1))
    results = {"pop": BaselineResult("pop", None, None, {
        part: chunked_metrics(empty, prior, inputs, targets)
        for part, (inputs, targets) in _parts(split).items()})}

    def repeat_for(tau: float, inputs: Sequence[UserSequence]) -> sp.csr_matrix:
        return repeat_matrix(flatten(inputs), n_items, tau)

    results["repeat"] = _tuned("repeat", "tau", list(taus), split, repeat_for, prior)
    similarity = cooc_matrices(split.train, n_items, [int(w) for w in windows])

    def cooc_for(window: float, inputs: Sequence[UserSequence]) -> sp.csr_matrix:
        w = int(window)
        return (recent_matrix(flatten(inputs), n_items, w) @ similarity[w]).tocsr()

    results["cooc"] = _tuned("cooc", "window", [float(w) for w in windows], split, cooc_for,
                             prior)
    return results


def best_baseline(results: Mapping[str, BaselineResult]) -> BaselineResult | None:
    """The baseline with the highest validation NDCG@10 (the gate's floor)."""
    return max(results.values(), key=BaselineResult.val_ndcg, default=None)


# --------------------------------------------------------------------------- reporting
REPORT_KEYS = ("ndcg@10", "hr@10")


def flat_metrics(results: Mapping[str, BaselineResult]) -> dict[str, float]:
    """``baseline_<name>_<metric>_<valid|test>`` -> value, e.g. ``baseline_repeat_ndcg@10_valid``
    (MLflow spells '@' as '_at_')."""
    flat = {}
    for name, result in results.items():
        for part, suffix in (("val", "valid"), ("test", "test")):
            for key in REPORT_KEYS:
                flat[f"baseline_{name}_{key}_{suffix}"] = float(result.metrics[part][key])
    return flat


def knob_tags(results: Mapping[str, BaselineResult]) -> dict[str, str]:
    """``baseline_repeat_tau`` -> "3" etc.: the knob each baseline was evaluated with."""
    return {f"baseline_{r.name}_{r.knob}": format_value(r.value) for r in results.values()
            if r.knob is not None and r.value is not None}


def report(results: Mapping[str, BaselineResult]) -> dict[str, Any]:
    """The quality.json section: knob, validation and test figures, the tuning grid."""
    return {name: {"knob": None if r.knob is None or r.value is None
                   else {r.knob: format_value(r.value)},
                   "val": {k: round(float(r.metrics["val"][k]), 6) for k in REPORT_KEYS},
                   "test": {k: round(float(r.metrics["test"][k]), 6) for k in REPORT_KEYS},
                   **({"grid_val_ndcg@10": {k: round(v, 6) for k, v in r.grid.items()}}
                      if r.grid else {})}
            for name, r in results.items()}


def format_table(results: Mapping[str, BaselineResult],
                 ours: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """Validation and test NDCG@10 / HR@10 of each baseline (and of ``ours``, when given)."""
    header = "".join(f"{part + ' ' + k:>16}" for part in ("val", "test") for k in REPORT_KEYS)
    lines = ["simple baselines (same split and evaluation; knobs tuned on validation)",
             f"{'model':<24}{header}"]
    rows: dict[str, Mapping[str, Mapping[str, float]]] = {}
    if ours is not None:
        rows["ours"] = ours
    rows.update({r.label: r.metrics for r in results.values()})
    for label, metrics in rows.items():
        lines.append(f"{label:<24}" + "".join(
            f"{float(metrics[part][k]):>16.4f}" for part in ("val", "test")
            for k in REPORT_KEYS))
    best = best_baseline(results)
    if best is not None:
        lines.append(f"best simple baseline on validation: {best.label}, NDCG@10 "
                     f"{best.val_ndcg():.4f}")
        if ours is not None and float(ours["val"]["ndcg@10"]) < best.val_ndcg():
            lines.append(f"WARNING: ours ({float(ours['val']['ndcg@10']):.4f}) is below it on "
                         "validation: the promotion gate refuses such a version (unless "
                         "run.baseline_gate is false, or --force)")
    return "\n".join(lines)
