"""Baseline change detectors (River ADWIN / PageHinkley, ruptures KernelCPD) and trivial rows.

River and ruptures are training/dev dependencies only; ``app/`` never imports this module.
Every detector runs per user (a fresh detector for each sequence) and gets the same
``min_events`` guard as ours (no alarm before the user has that many events).

- ADWIN and PageHinkley read the per-event surprise -log p(item_t | prefix) of the sequence
  model (online). Knobs: ADWIN ``delta`` (smaller, fewer alarms), PageHinkley ``threshold``
  (larger, fewer alarms).
- GLR (:func:`glr_trace`): a generalised likelihood-ratio test for one change in the topic
  (genre) mix within a sliding window; online; knob: the threshold on the statistic.
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


KCPD_MIN_SIZE = 2  # events in a segment


class KernelCPDRunner:
    """KernelCPD fitted once per sequence, so that many penalties can be tried cheaply."""

    def __init__(self, points: Sequence[np.ndarray]) -> None:
        """points: per-sequence item embeddings, float[L_i, D]."""
        self.algos = [rpt.KernelCPD(kernel="rbf", min_size=KCPD_MIN_SIZE, jump=1).fit(p)
                      for p in points]
        self.lengths = [len(p) for p in points]

    def alarms(self, pen: float | None, min_events: int = MIN_EVENTS) -> list[np.ndarray]:
        """Change points (first event of each new segment) per sequence; None -> log(L)."""
        out = []
        for algo, n in zip(self.algos, self.lengths, strict=True):
            if n < 2 * KCPD_MIN_SIZE:  # too short for two segments: ruptures refuses to try
                out.append(np.zeros(0, np.int64))
                continue
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


def _multinomial_loglik(counts: np.ndarray) -> np.ndarray:
    """Maximised multinomial log-likelihood sum_k c_k log(c_k / n) per row of float[S, K]."""
    total = counts.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(counts > 0, counts * np.log(counts / np.maximum(total, 1e-12)), 0.0)
    return terms.sum(axis=-1)


def glr_trace(topic_counts: np.ndarray, window: int = 40,
              min_segment: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """GLR statistic for one change in the topic mix among the last ``window`` events.

    topic_counts: float[L, K], each event's (fractional) topic counts. At event ``t`` the window
    is ``[max(0, t - window + 1), t]``; for every split ``s`` leaving ``min_segment`` events on
    each side, the statistic is the log-likelihood ratio of two multinomials (before / from
    ``s``) against one, maximised over ``s``. Returns (statistic float[L], the maximising split
    int[L], the located change; ``t`` where no split fits).
    """
    length = len(topic_counts)
    stats = np.zeros(length)
    located = np.arange(length, dtype=np.int64)
    for t in range(length):
        start = max(0, t - window + 1)
        block = topic_counts[start : t + 1]
        n = len(block)
        if n < 2 * min_segment:
            continue
        cum = np.cumsum(block, axis=0)
        splits = np.arange(min_segment, n - min_segment + 1)  # first event of the right side
        left = cum[splits - 1]
        right = cum[-1][None, :] - left
        gain = (_multinomial_loglik(left) + _multinomial_loglik(right)
                - _multinomial_loglik(cum[-1][None, :]))
        best = int(np.argmax(gain))
        stats[t] = float(gain[best])
        located[t] = start + int(splits[best])
    return stats, located
