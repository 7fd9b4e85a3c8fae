"""Ranking the catalogue: drift-aware re-scoring, top-k with exclusions, explanations.

Score vectors are indexed like the model's vocabulary: entry 0 is the padding index and
entries 1..N are catalogue items (``item_logits`` columns). ``item_topics`` is aligned with
the scores (``indexed_topics`` builds it from the topic table's per-position topics); a
topic < 0 means "no topic" (the padding entry, or an item without one). For a score vector
without a padding entry (``bundle.score_next`` gives positions 0..N-1) pass ``pad_index=None``.

Inputs may be numpy arrays or torch tensors (any device, any float dtype); outputs are numpy.

Ties in score are broken by ``tie_key`` when given (``id_order``: each row's rank among the
sorted item ids), else by the lower index. Row order is an accident of arrival (each process
appends new items as it learns of them), so serving passes the key: every process then gives
the same answer for the same scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

EPS = 1e-3  # floor on a topic's post-change weight: an unwatched topic is damped, not banned
UNKNOWN_TOPIC = "unknown"


@dataclass(frozen=True, slots=True)
class Ranking:
    """Top-k result: ``indices`` int64[k] best first, ``scores`` float64[k] (adjusted when
    drift-aware), ``drift_aware`` = the top-k differs from the unadjusted top-k."""

    indices: np.ndarray
    scores: np.ndarray
    drift_aware: bool


def as_numpy(values: Any, dtype: Any = np.float64) -> np.ndarray:
    """A 1-D numpy copy of an array-like or a torch tensor (moved to the CPU, upcast)."""
    if hasattr(values, "detach"):  # torch.Tensor, without importing torch into the domain
        values = values.detach().cpu()
        if values.is_floating_point():  # bf16 has no numpy dtype
            values = values.float()
        values = values.numpy()
    return np.array(values, dtype=dtype).reshape(-1)


def indexed_topics(position_topics: Sequence[int] | np.ndarray) -> np.ndarray:
    """int64[N + 1] topics by model index from topics by catalogue position (int[N]): -1 at 0."""
    return np.concatenate([[-1], as_numpy(position_topics, np.int64)]).astype(np.int64)


def topic_vector(weights: Mapping[int, float] | np.ndarray | Sequence[float], n_topics: int
                 ) -> np.ndarray:
    """float64[n_topics] topic distribution (sums to 1, or all zeros) from a dict or array."""
    vector = np.zeros(n_topics, dtype=np.float64)
    if isinstance(weights, Mapping):
        for topic, weight in weights.items():
            if 0 <= int(topic) < n_topics:
                vector[int(topic)] = float(weight)
    else:
        given = as_numpy(weights)[:n_topics]
        vector[: len(given)] = given
    vector = np.clip(vector, 0.0, None)
    total = vector.sum()
    return vector / total if total > 0 else vector


def drift_aware_scores(
    base_scores: Any,
    item_topics: Any,
    post_change_weights: Mapping[int, float] | np.ndarray | Sequence[float] | None,
    strength: float,
    eps: float = EPS,
) -> np.ndarray:
    """Tilt next-item scores toward the interests the user has since a detected change.

    The model's scores are logits of p(item | history). After a drift we trust the post-change
    topic distribution q (topic shares of the events since the change point) more than the
    model, which still carries the old interests in its state, and combine the two as a
    product of experts: ``p'(item) ∝ p(item) * (q(topic(item)) + eps) ** strength``, i.e. in
    logit space ``s' = s + strength * log(q(topic) + eps)``. ``strength = 0`` is the model
    alone; ``eps`` keeps items of other topics reachable. Items without a topic (< 0) get
    ``q = 0``. The padding entry keeps its score (-inf from the model).

    Args:
        base_scores: float[n] next-item logits (or any monotone score; -inf stays -inf).
        item_topics: int[n] topic of each entry, aligned with ``base_scores``.
        post_change_weights: {topic_id: weight} or float[n_topics]; None = no drift.
        strength: >= 0; 1 weighs the post-change interests as much as the model.
    Returns:
        float64[n] adjusted scores; a copy of ``base_scores`` when there is no drift.
    """
    scores = as_numpy(base_scores)
    if post_change_weights is None or strength == 0:
        return scores
    if strength < 0:
        raise ValueError("strength must be >= 0")
    topics = as_numpy(item_topics, np.int64)
    if len(topics) != len(scores):
        raise ValueError("item_topics must be aligned with base_scores")
    n_topics = max(int(topics.max(initial=-1)) + 1, _length(post_change_weights))
    q = topic_vector(post_change_weights, n_topics)
    if q.sum() == 0:
        return scores
    weight = np.where(topics >= 0, q[np.clip(topics, 0, None)], 0.0)
    return scores + strength * np.log(weight + eps)  # -inf (padding) stays -inf


def id_order(item_ids: Sequence[str]) -> np.ndarray:
    """int64[N]: each row's rank among the sorted ids, the ``tie_key`` of scores whose entry i
    is ``item_ids[i]`` (for scores with a padding entry, prepend one key for it)."""
    order = sorted(range(len(item_ids)), key=item_ids.__getitem__)
    key = np.empty(len(item_ids), np.int64)
    key[np.asarray(order, np.int64)] = np.arange(len(item_ids), dtype=np.int64)
    return key


def top_k(scores: Any, k: int, exclude: Any = None, pad_index: int | None = 0,
          tie_key: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best entries: (int64[k'] indices, float64[k'] scores), best first.

    Never returns ``pad_index``, an entry in ``exclude`` (e.g. items the user has seen), or a
    non-finite score, so ``k' < k`` when fewer remain. Ties go to the lower ``tie_key`` (an
    int array aligned with the scores), else to the lower index. Only the entries tied with
    the k-th score are sorted, never the whole vector.
    """
    values = as_numpy(scores)
    allowed = np.isfinite(values)
    if pad_index is not None and 0 <= pad_index < len(values):
        allowed[pad_index] = False
    if exclude is not None:
        banned = as_numpy(exclude, np.int64)
        allowed[banned[(banned >= 0) & (banned < len(values))]] = False
    candidates = np.flatnonzero(allowed)
    if k <= 0 or len(candidates) == 0:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    if k < len(candidates):  # keep everything tied with the k-th score, then sort exactly
        kth = np.partition(-values[candidates], k - 1)[k - 1]
        candidates = candidates[values[candidates] >= -kth]
    ties = candidates if tie_key is None else np.asarray(tie_key)[candidates]
    order = np.lexsort((ties, -values[candidates]))[:k]
    chosen = candidates[order]
    return chosen.astype(np.int64), values[chosen]


def rank(
    base_scores: Any,
    item_topics: Any,
    k: int,
    post_change_weights: Mapping[int, float] | np.ndarray | Sequence[float] | None = None,
    strength: float = 1.0,
    exclude: Any = None,
    pad_index: int | None = 0,
    tie_key: np.ndarray | None = None,
) -> Ranking:
    """Top-k of the drift-aware scores, and whether drift awareness changed the top-k
    (same items in the same order = not drift-aware); ties as in ``top_k``."""
    base_idx, _ = top_k(base_scores, k, exclude, pad_index, tie_key)
    adjusted = drift_aware_scores(base_scores, item_topics, post_change_weights, strength)
    indices, scores = top_k(adjusted, k, exclude, pad_index, tie_key)
    return Ranking(indices, scores, not np.array_equal(indices, base_idx))


def rank_subset(
    rows: Any,
    base_scores: Any,
    item_topics: Any,
    k: int,
    post_change_weights: Mapping[int, float] | np.ndarray | Sequence[float] | None = None,
    strength: float = 1.0,
    exclude: Any = None,
    tie_key: np.ndarray | None = None,
) -> Ranking:
    """``rank`` over a subset of the catalogue (candidates an index found): `rows` int64[c]
    ascending positions, `base_scores` float[c] their scores, `item_topics`, `exclude` and
    `tie_key` over the whole catalogue (positions, no padding entry). The indices returned
    are catalogue positions; with every row in the subset this is ``rank`` over all of them
    (ties go to the lower key, or the lower position, in both: the rows are ascending)."""
    positions = as_numpy(rows, np.int64)
    banned = None
    if exclude is not None:
        banned = np.flatnonzero(np.isin(positions, as_numpy(exclude, np.int64)))
    # the tilt normalises the post-change weights over every topic they name, whichever
    # topics the subset holds, so it is the same tilt as over the whole catalogue
    topics = as_numpy(item_topics, np.int64)[positions]
    ties = None if tie_key is None else np.asarray(tie_key)[positions]
    found = rank(base_scores, topics, k, post_change_weights, strength, exclude=banned,
                 pad_index=None, tie_key=ties)
    return Ranking(positions[found.indices], found.scores, found.drift_aware)


def explain_topics(item_indices: Any, item_topics: Any, topic_names: Sequence[str]
                   ) -> list[str]:
    """The interest (topic name) each ranked item serves; ``"unknown"`` without a topic."""
    topics = as_numpy(item_topics, np.int64)
    names = []
    for index in as_numpy(item_indices, np.int64):
        topic = int(topics[index])
        names.append(topic_names[topic] if 0 <= topic < len(topic_names) else UNKNOWN_TOPIC)
    return names


def _length(weights: Mapping[int, float] | np.ndarray | Sequence[float]) -> int:
    if isinstance(weights, Mapping):
        return max((int(t) + 1 for t in weights), default=0)
    return len(as_numpy(weights))
