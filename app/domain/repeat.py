"""Repeat-aware scoring: the sequence model's next-item scores blended with how strongly the
user has bought each item before (buy-again) and how popular it is.

    score(i) = model_weight * model(i) + repeat_weight * log(1 + r(i))
               + popularity_weight * log(1 + n(i))

``r(i)`` sums ``exp(-age / tau)`` over the user's events of item ``i`` among the last
``window`` events of the history, ``age`` counting the baskets (distinct timestamps) after
the event, so the order inside a basket never matters; ``n(i)`` is the item's count in the
training events. With weights (1, 0, 0) the blend is the model, with model weight 0 it is a
buy-again and popularity ranker (what serves when the model ranks worse); the weights are fitted on
validation by training (``training.blend``), and serving and evaluation both call
``blend_scores`` through the bundle's scorer.

Indices are model indices (1..N, 0 = padding); score rows are catalogue positions 0..N-1
(``index - 1``), as the bundle's ``score_next_batch`` gives them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class RepeatBlend:
    tau: float  # decay in baskets (inf: plain frequency)
    repeat_weight: float
    popularity_weight: float
    window: int  # events of the history read (the latest ones)
    model_weight: float = 1.0

    @property
    def active(self) -> bool:
        """Whether the blend changes the model's scores at all."""
        return (self.model_weight != 1.0 or self.repeat_weight != 0.0
                or self.popularity_weight != 0.0)

    def to_json(self) -> dict[str, Any]:
        values = asdict(self)
        values["tau"] = None if math.isinf(self.tau) else self.tau  # JSON has no inf
        return values

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> RepeatBlend:
        tau = values.get("tau")
        return cls(tau=math.inf if tau is None else float(tau),
                   repeat_weight=float(values["repeat_weight"]),
                   popularity_weight=float(values["popularity_weight"]),
                   window=int(values["window"]),
                   model_weight=float(values.get("model_weight", 1.0)))


def basket_ages(times: np.ndarray) -> np.ndarray:
    """int64[E]: for each event of one user's history (oldest first), the number of distinct
    timestamps after its own (0 for the latest basket)."""
    times = np.asarray(times, np.float64)
    if len(times) == 0:
        return np.zeros(0, np.int64)
    new_basket = np.ones(len(times), bool)
    new_basket[1:] = times[1:] != times[:-1]
    basket = np.cumsum(new_basket) - 1
    return (basket[-1] - basket).astype(np.int64)


def repeat_strength(indices: np.ndarray, times: np.ndarray, tau: float, window: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(int64[u] distinct model indices, float64[u] sum of exp(-basket age / tau)) over the
    last ``window`` events of one history (indices > 0 only: unknown items are skipped)."""
    indices = np.asarray(indices, np.int64)[-window:]
    times = np.asarray(times, np.float64)[-window:]
    known = indices > 0
    indices, times = indices[known], times[known]
    if len(indices) == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    weights = (np.ones(len(indices)) if math.isinf(tau)
               else np.exp(-basket_ages(times) / float(tau)))
    items, inverse = np.unique(indices, return_inverse=True)
    return items, np.bincount(inverse, weights=weights, minlength=len(items))


def blend_scores(scores: np.ndarray, indices: np.ndarray, times: np.ndarray,
                 blend: RepeatBlend, log_popularity: np.ndarray,
                 rows: np.ndarray | None = None) -> np.ndarray:
    """One history's scores with the blend added, in place and returned: float32[N] over the
    catalogue positions, or float32[c] over ``rows`` (int64[c] positions, ascending) when
    given. ``log_popularity``: float32[N], position-aligned ``log(1 + n)``."""
    if blend.model_weight != 1.0:
        scores *= np.float32(blend.model_weight)
    if blend.popularity_weight:
        weight = np.float32(blend.popularity_weight)
        scores += weight * (log_popularity[: len(scores)] if rows is None
                            else log_popularity[rows])
    if blend.repeat_weight:
        items, strength = repeat_strength(indices, times, blend.tau, blend.window)
        lift = (blend.repeat_weight * np.log1p(strength)).astype(np.float32)
        positions = items - 1
        if rows is None:
            inside = positions < len(scores)
            scores[positions[inside]] += lift[inside]
        else:
            where = np.minimum(np.searchsorted(rows, positions), max(len(rows) - 1, 0))
            found = (rows[where] == positions) if len(rows) else np.zeros(0, bool)
            scores[where[found]] += lift[found]
    return scores


def repeat_positions(indices: np.ndarray, blend: RepeatBlend) -> np.ndarray:
    """int64[u]: the catalogue positions the blend lifts for this history (its repeat items
    within the window), ascending; empty when the blend reads no repeats."""
    if not blend.repeat_weight:
        return np.zeros(0, np.int64)
    indices = np.asarray(indices, np.int64)[-blend.window:]
    return np.unique(indices[indices > 0]) - 1
