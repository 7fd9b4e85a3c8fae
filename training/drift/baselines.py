"""Baseline change detectors (River ADWIN / PageHinkley, ruptures KernelCPD) and trivial rows.

River and ruptures are training/dev dependencies only; ``app/`` never imports this module.
Every detector runs per user (a fresh detector for each sequence) and gets the same
``min_events`` guard as ours (no alarm before the user has that many events).

- ADWIN and PageHinkley read the per-event surprise -log p(item_t | prefix) of the sequence
  model (online). Knobs: ADWIN ``delta`` (smaller, fewer alarms), PageHinkley ``threshold``
  (larger, fewer alarms).
- KernelCPD(kernel="rbf", min_size=2, jump=1) reads the item embeddings of the whole sequence
  (offline: it sees the future): the item text embeddings, and (a second row) the sequence
  model's learned item table. Knob: the penalty ``pen`` (larger, fewer change points); it has
  no default, so the "default" row uses the BIC-style ``pen = log(L)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import ruptures as rpt
from river.drift import ADWIN, PageHinkley

from app.domain.drift import MIN_EVENTS


def _guard(alarms: list[int], min_events: int) -> np.ndarray:
    return np.asarray([a for a in alarms if a >= min_events - 1], dtype=np.int64)


def _river_alarms(detector: Any, signal: np.ndarray, min_events: int) -> np.ndarray:
    """Feed ``signal`` (float[L]) to a River drift detector; the events (int[K]) it flags."""
    alarms = []
    for t, value in enumerate(signal):
        detector.update(float(value))
        if detector.drift_detected:
            alarms.append(t)
    return _guard(alarms, min_events)


def adwin_alarms(signal: np.ndarray, delta: float = 0.002,
                 min_events: int = MIN_EVENTS) -> np.ndarray:
    """Events (int[K]) where ADWIN on ``signal`` (float[L]) flags a drift."""
    return _river_alarms(ADWIN(delta=delta), signal, min_events)


def page_hinkley_alarms(signal: np.ndarray, threshold: float = 50.0,
                        min_events: int = MIN_EVENTS) -> np.ndarray:
    """Events (int[K]) where PageHinkley (River defaults but ``threshold``) flags a drift."""
    return _river_alarms(PageHinkley(threshold=threshold), signal, min_events)


class KernelCPDRunner:
    """KernelCPD fitted once per sequence, so that many penalties can be tried cheaply."""

    def __init__(self, points: Sequence[np.ndarray]) -> None:
        """points: per-sequence item embeddings, float[L_i, D]."""
        self.algos = [rpt.KernelCPD(kernel="rbf", min_size=2, jump=1).fit(p) for p in points]
        self.lengths = [len(p) for p in points]

    def alarms(self, pen: float | None, min_events: int = MIN_EVENTS) -> list[np.ndarray]:
        """Change points (first event of each new segment) per sequence; None -> log(L)."""
        out = []
        for algo, n in zip(self.algos, self.lengths, strict=True):
            value = math.log(max(n, 2)) if pen is None else pen
            out.append(_guard(algo.predict(pen=value)[:-1], min_events))
        return out


def every_k_alarms(length: int, k: int, min_events: int = MIN_EVENTS) -> np.ndarray:
    """Trivial detector: an alarm every ``k`` events (int[K])."""
    return _guard(list(range(k - 1, length, k)), min_events)


def never_alarms(length: int) -> np.ndarray:
    """Trivial detector that never raises an alarm."""
    del length
    return np.zeros(0, dtype=np.int64)
