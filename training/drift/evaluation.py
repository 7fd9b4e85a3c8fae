"""Change-point metrics over a set of cases, each with at most one true change point.

- An alarm within ``margin`` events of a case's change point (``|alarm - cp| <= margin``)
  detects it; only the first such alarm is a true positive, every other alarm (including all
  alarms on unspliced cases) is a false positive.
- precision = TP / alarms, recall = TP / change points, F1 their harmonic mean.
- median_delay: over spliced cases with any alarm at or after ``cp - margin``, the median of
  (first such alarm - cp) in events, so a late detection still shows how late it was.
- alarms_per_1k: alarms per 1,000 events over the unspliced cases (the false-alarm rate).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MARGIN = 3


@dataclass(frozen=True, slots=True)
class CaseOutcome:
    true_positive: bool
    false_positives: int
    delay: int | None  # first alarm at or after cp - margin, minus cp


def match_case(alarms: np.ndarray, change_point: int, margin: int = MARGIN) -> CaseOutcome:
    """Score one case's alarms (int[K], increasing) against its change point (-1 = none)."""
    alarms = np.asarray(alarms, dtype=np.int64)
    if change_point < 0:
        return CaseOutcome(False, len(alarms), None)
    hits = np.flatnonzero(np.abs(alarms - change_point) <= margin)
    later = alarms[alarms >= change_point - margin]
    delay = int(later[0] - change_point) if len(later) else None
    return CaseOutcome(bool(len(hits)), len(alarms) - min(len(hits), 1), delay)


def evaluate_alarms(alarms: Sequence[np.ndarray], change_points: Sequence[int],
                    lengths: Sequence[int], kinds: Sequence[str] | None = None,
                    margin: int = MARGIN) -> dict[str, float | None]:
    """Metrics over cases: alarms[i] int[K_i], change_points[i] (-1 = unspliced), lengths[i].

    Returns f1, precision, recall, median_delay, alarms_per_1k, and recall_<kind> per kind.
    """
    outcomes = [match_case(a, cp, margin) for a, cp in zip(alarms, change_points, strict=True)]
    n_points = sum(1 for cp in change_points if cp >= 0)
    tp = sum(o.true_positive for o in outcomes)
    fp = sum(o.false_positives for o in outcomes)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / n_points if n_points else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    delays = [o.delay for o in outcomes if o.delay is not None]
    none_events = sum(n for n, cp in zip(lengths, change_points, strict=True) if cp < 0)
    none_alarms = sum(len(a) for a, cp in zip(alarms, change_points, strict=True) if cp < 0)
    metrics: dict[str, float | None] = {
        "f1": f1, "precision": precision, "recall": recall,
        "median_delay": float(np.median(delays)) if delays else None,
        "alarms_per_1k": 1000.0 * none_alarms / none_events if none_events else None,
    }
    for kind in sorted(set(kinds or ())):
        picked = [o for o, k in zip(outcomes, kinds or (), strict=True) if k == kind]
        if kind != "none" and picked:
            metrics[f"recall_{kind}"] = sum(o.true_positive for o in picked) / len(picked)
    return metrics
