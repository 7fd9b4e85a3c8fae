"""Fitting the ranker's repeat-aware blend (``app.domain.repeat``) on validation.

The blend adds buy-again and popularity terms to the sequence model's scores. Its weights are
chosen on the validation targets from a small grid that holds the model alone (so the blend is
never worse than the model on validation, and reduces to it where repeats do not help) and
rankers without the model (model weight 0: buy-again and popularity alone, which serve when
the model ranks worse than they do); the decay ``tau`` is the one the buy-again baseline chose
on validation. Scores are the
trainer's (``training.evaluate.score_sequences``) with the blend added by the same function
the bundle's scorer calls, so the figures here are the ones the bundle must reproduce.
Users are scored in chunks: memory stays bounded at any catalogue size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from app.domain.repeat import RepeatBlend, blend_scores
from app.ml.sequence import SequenceInterestModel
from training.baselines import CHUNK_CELLS, item_counts
from training.data.sequences import LeaveOneOutSplit, UserSequence
from training.evaluate import Metrics, all_metrics, score_sequences

REPEAT_WEIGHTS: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
POPULARITY_WEIGHTS: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
WINDOW = 500  # history events the blend reads: long enough for a household's staples bought
# months ago (a drift-sized window lost them on grocery data); serving loads as many events


@dataclass
class BlendFit:
    blend: RepeatBlend  # the chosen weights (both 0: the model alone)
    log_popularity: np.ndarray  # float32[N], catalogue order
    metrics: dict[str, Metrics]  # "val" / "test" of the chosen blend
    grid: dict[str, float] = field(default_factory=dict)  # "model,repeat,popularity" -> val
    # NDCG@10


def log_popularity(split: LeaveOneOutSplit, n_items: int) -> np.ndarray:
    """float32[N]: log(1 + count) of each item in the training parts, catalogue order."""
    return np.log1p(item_counts(split.train, n_items)[1:]).astype(np.float32)


def blended(scores: torch.Tensor, inputs: Sequence[UserSequence], blend: RepeatBlend,
            popularity: np.ndarray) -> torch.Tensor:
    """A copy of ``scores`` (FloatTensor[U, N + 1], column 0 = padding) with the blend added
    to each user's row from that user's history."""
    out = scores.clone()
    if not blend.active:
        return out
    rows = out.numpy()
    for row, seq in zip(rows, inputs, strict=True):
        blend_scores(row[1:], seq.items, seq.times, blend, popularity)
    return out


def _grid() -> list[tuple[float, float, float]]:
    """(model, repeat, popularity) weights, the model alone first."""
    with_model = [(1.0, r, p) for r in REPEAT_WEIGHTS for p in POPULARITY_WEIGHTS]
    # without the model, popularity must order the items the user never bought: at weight 0
    # they would all tie, and the metrics count a tie in the target's favour
    without = [(0.0, 1.0, p) for p in (0.01, *POPULARITY_WEIGHTS[1:])]
    return with_model + without


def _grid_metrics(model: SequenceInterestModel, inputs: Sequence[UserSequence],
                  targets: np.ndarray, at: np.ndarray, device: torch.device,
                  blends: Sequence[RepeatBlend], popularity: np.ndarray
                  ) -> list[Metrics]:
    """Metrics of each blend over all users, scored ``chunk`` users at a time (means over
    users: chunk means weighted by chunk size give the same figures)."""
    chunk = max(1, CHUNK_CELLS // (len(popularity) + 1))
    totals: list[dict[str, float]] = [{} for _ in blends]
    for start in range(0, len(inputs), chunk):
        part = list(inputs[start:start + chunk])
        scores = score_sequences(model, part, device, at=at[start:start + chunk])
        for n, blend in enumerate(blends):
            found = all_metrics(blended(scores, part, blend, popularity), part,
                                targets[start:start + chunk])
            for key, value in found.items():
                totals[n][key] = totals[n].get(key, 0.0) + value * len(part)
    return [{key: value / max(len(inputs), 1) for key, value in total.items()}
            for total in totals]


def fit_blend(model: SequenceInterestModel, split: LeaveOneOutSplit, n_items: int,
              device: torch.device, tau: float = math.inf, window: int = WINDOW,
              enabled: bool = True) -> BlendFit:
    """Choose the blend weights on validation (the first best in grid order, which starts at
    the model alone), then score the chosen blend on test. ``enabled=False``: the model
    alone, evaluated the same way."""
    popularity = log_popularity(split, n_items)
    grid = _grid() if enabled else [(1.0, 0.0, 0.0)]
    blends = [RepeatBlend(tau, r, p, window, m) for m, r, p in grid]
    val = _grid_metrics(model, split.valid_inputs(), split.valid_items, split.valid_times,
                        device, blends, popularity)
    best = max(range(len(grid)), key=lambda n: (val[n].get("ndcg@10", 0.0), -n))
    chosen = blends[best]
    test = _grid_metrics(model, split.test_inputs(), split.test_items, split.test_times,
                         device, [chosen], popularity)[0]
    return BlendFit(chosen, popularity, {"val": val[best], "test": test},
                    {f"{w:g},{r:g},{p:g}": float(m.get("ndcg@10", 0.0))
                     for (w, r, p), m in zip(grid, val, strict=True)})
