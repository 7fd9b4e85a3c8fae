"""Change-point metrics over a set of cases, each with at most one true change point.

- An alarm within ``margin`` events of a case's change point (``|alarm - cp| <= margin``)
  detects it; only the first such alarm is a true positive, every other alarm (including all
  alarms on unspliced cases) is a false positive.
- precision = TP / alarms, recall = TP / change points, F1 their harmonic mean.
- median_delay: over spliced cases with any alarm at or after ``cp - margin``, the median of
  (first such alarm - cp) in events, so a late detection still shows how late it was.
- alarms_per_1k: alarms per 1,000 events over the unspliced cases (the false-alarm rate).
- A case may have several change points (generator C's A -> B -> A): pass a list of them; each
  is detected by the first not yet used alarm within the margin, and counts once in recall.
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


def match_case_points(alarms: np.ndarray, change_points: Sequence[int],
                      margin: int = MARGIN) -> tuple[int, int, list[int]]:
    """Score one case with several change points (oldest first): (true positives, false
    positives, delays). Each point takes the first unused alarm within ``margin``; its delay
    is that of the first alarm at or after ``cp - margin``, as in :func:`match_case`."""
    alarms = np.sort(np.asarray(alarms, dtype=np.int64))
    used = np.zeros(len(alarms), dtype=bool)
    tp, delays = 0, []
    for point in change_points:
        hits = np.flatnonzero((np.abs(alarms - point) <= margin) & ~used)
        if len(hits):
            used[hits[0]] = True
            tp += 1
        later = alarms[alarms >= point - margin]
        if len(later):
            delays.append(int(later[0] - point))
    return tp, len(alarms) - tp, delays


def evaluate_alarms(alarms: Sequence[np.ndarray],
                    change_points: Sequence[int] | Sequence[int | Sequence[int]],
                    lengths: Sequence[int], kinds: Sequence[str] | None = None,
                    margin: int = MARGIN) -> dict[str, float | None]:
    """Metrics over cases: alarms[i] int[K_i], change_points[i] (-1 = unspliced, or a list of
    change points, empty = unspliced), lengths[i].

    Returns f1, precision, recall, median_delay, alarms_per_1k, and recall_<kind> per kind.
    """
    points = [([cp] if cp >= 0 else []) if isinstance(cp, int | np.integer) else list(cp)
              for cp in change_points]
    scored = []  # (true positives, false positives, delays, change points) per case
    for a, cp, pts in zip(alarms, change_points, points, strict=True):
        if isinstance(cp, int | np.integer):
            o = match_case(a, int(cp), margin)
            scored.append((int(o.true_positive), o.false_positives,
                           [] if o.delay is None else [o.delay], len(pts)))
        else:
            tp_i, fp_i, delays_i = match_case_points(a, pts, margin)
            scored.append((tp_i, fp_i, delays_i, len(pts)))
    n_points = sum(s[3] for s in scored)
    tp = sum(s[0] for s in scored)
    fp = sum(s[1] for s in scored)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / n_points if n_points else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    delays = [d for s in scored for d in s[2]]
    none_events = sum(n for n, pts in zip(lengths, points, strict=True) if not pts)
    none_alarms = sum(len(a) for a, pts in zip(alarms, points, strict=True) if not pts)
    metrics: dict[str, float | None] = {
        "f1": f1, "precision": precision, "recall": recall,
        "median_delay": float(np.median(delays)) if delays else None,
        "alarms_per_1k": 1000.0 * none_alarms / none_events if none_events else None,
    }
    for kind in sorted(set(kinds or ())):
        picked = [s for s, k in zip(scored, kinds or (), strict=True) if k == kind]
        if kind != "none" and picked and sum(s[3] for s in picked):
            metrics[f"recall_{kind}"] = sum(s[0] for s in picked) / sum(s[3] for s in picked)
    return metrics
