"""Threshold calibration: alarms at a stated false-alarm rate on sequences with no change.

Alibi Detect's online detectors pick the threshold whose expected run time between false
alarms matches a target, from a reference set about ten times that run time. One MovieLens user
has far too few events for that, so we pool: the threshold is the lowest one whose alarms over
the calibration users' unspliced sequences stay at or below ``target_per_1k`` per 1,000 events.
The same search tunes a baseline's knob to the same rate (:func:`tune_knob`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from app.domain.drift import alarm_indices


def alarms_per_1k(alarms: Sequence[np.ndarray], lengths: Sequence[int]) -> float:
    """Alarms per 1,000 events over a set of sequences."""
    events = int(sum(lengths))
    return 1000.0 * sum(len(a) for a in alarms) / max(events, 1)


def score_alarm_rate(scores: Sequence[np.ndarray], threshold: float, min_events: int,
                     cooldown: int) -> float:
    """Alarms per 1,000 events when ``alarm_indices`` runs on each score trace (float[L])."""
    alarms = [alarm_indices(s, threshold, min_events, cooldown) for s in scores]
    return alarms_per_1k(alarms, [len(s) for s in scores])


def calibrate_threshold(scores: Sequence[np.ndarray], target_per_1k: float, min_events: int,
                        cooldown: int) -> float:
    """The lowest threshold whose alarm rate on ``scores`` is at or below ``target_per_1k``.

    scores: per-sequence traces (float[L_i]) of sequences with no change point. The rate never
    rises with the threshold (fewer candidates can only give fewer spaced-out alarms), so a
    bisection over the sorted distinct scores finds it.
    """
    pooled = np.unique(np.concatenate([np.asarray(s, dtype=np.float64)[min_events - 1:]
                                       for s in scores]))
    if len(pooled) == 0:
        return 1.0
    lo, hi = 0, len(pooled)  # answer index in [lo, hi]; hi means "above every score"
    while lo < hi:
        mid = (lo + hi) // 2
        if score_alarm_rate(scores, float(pooled[mid]), min_events, cooldown) <= target_per_1k:
            hi = mid
        else:
            lo = mid + 1
    return float(pooled[lo]) if lo < len(pooled) else float(np.nextafter(pooled[-1], np.inf))


def tune_knob(rate: Callable[[float], float], target_per_1k: float, lo: float, hi: float,
              rate_rises_with_knob: bool, steps: int = 14) -> float:
    """Bisection (in log space) for the knob whose alarm rate is closest to, and not above,
    ``target_per_1k``; ``rate(knob)`` must be monotone in the knob over ``[lo, hi]``."""
    log_lo, log_hi = math.log(lo), math.log(hi)
    safe = log_lo if rate_rises_with_knob else log_hi  # the end that gives fewest alarms
    for _ in range(steps):
        mid = 0.5 * (log_lo + log_hi)
        ok = rate(math.exp(mid)) <= target_per_1k
        # Move toward more alarms while still at or under the target.
        if ok == rate_rises_with_knob:
            log_lo = mid
        else:
            log_hi = mid
        if ok:
            safe = mid
    return math.exp(safe)


def fit_kind_threshold(scores: Sequence[float], is_gradual: Sequence[bool]) -> float:
    """The cut on :func:`app.domain.drift.kind_score` that best separates gradual (above) from
    abrupt (at or below) changes, by accuracy; midway between neighbouring scores."""
    values = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(is_gradual, dtype=bool)
    order = np.argsort(values, kind="stable")
    values, labels = values[order], labels[order]
    # Cut after position k: the first k are called abrupt, the rest gradual.
    abrupt_right = np.concatenate([[0], np.cumsum(~labels)])
    gradual_right = labels.sum() - np.concatenate([[0], np.cumsum(labels)])
    k = int(np.argmax(abrupt_right + gradual_right))
    if k == 0:
        return float(values[0]) - 1.0
    if k == len(values):
        return float(values[-1])
    return float(0.5 * (values[k - 1] + values[k]))
