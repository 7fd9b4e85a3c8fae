"""Item-to-item similarity over an item representation table: neighbours and explanations.

Tables are float[N, H], row i = catalogue position i (no padding row). `unit_rows` makes
every row unit length once (zero rows stay zero: they are similar to nothing), after which a
cosine similarity is a dot product.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from app.domain.ranking import as_numpy, top_k


def unit_rows(table: Any) -> np.ndarray:
    """float32[N, H] copy of `table` with unit-length rows (zero rows stay zero)."""
    if hasattr(table, "detach"):
        table = table.detach().cpu().float().numpy()
    rows = np.array(table, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)


def nearest(unit: np.ndarray, position: int, k: int, exclude: Any = None,
            tie_key: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The `k` rows most similar to row `position` (never itself, nor an `exclude`d row):
    (int64[k'] positions, float64[k'] cosine similarities), most similar first; equal
    similarities by the lower `tie_key` (int[N], e.g. ``ranking.id_order``), else the lower
    row."""
    similarities = unit @ unit[position]
    banned = np.asarray([position], np.int64)
    if exclude is not None:
        banned = np.concatenate([banned, as_numpy(exclude, np.int64)])
    return top_k(similarities, k, banned, pad_index=None, tie_key=tie_key)


def explain(unit: np.ndarray, recommended: Sequence[int], history: Sequence[int],
            per_item: int = 2) -> list[list[tuple[int, float]]]:
    """For each recommended position, the (at most `per_item`) positions of the history that
    are most similar to it, with their similarity, most similar first. Only positive
    similarities count: an unrelated history item explains nothing."""
    if not len(recommended) or not len(history):
        return [[] for _ in recommended]
    seen = np.asarray(list(dict.fromkeys(int(h) for h in history)), np.int64)
    scores = unit[np.asarray(recommended, np.int64)] @ unit[seen].T  # [R, H']
    explanations = []
    for row in scores:
        order = np.lexsort((np.arange(len(row)), -row))[:per_item]
        explanations.append([(int(seen[j]), float(row[j])) for j in order if row[j] > 0])
    return explanations
