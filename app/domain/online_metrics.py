"""Online metrics of served recommendations: hits, reciprocal ranks, intervals, time buckets.

An impression is the ranked list one response showed one user. What the user did next
decides it: the user's next events after the impression, at most `event_window` of them and
only those within `time_window` seconds of it. The impression is a *hit at k* when one of
those events is on one of its first k items; its *reciprocal rank* is 1 / rank of the
best-placed such item (rank 1 = first), 0 without a hit.

An impression is *settled* once its window has closed (`event_window` events followed it, or
`time_window` seconds passed): only settled impressions are counted, so a recent impression
whose user has not acted yet is neither a miss nor a hit (it is *pending*), and recent
buckets are not biased towards misses.

Intervals are 95 % by default: Wilson's score interval for the hit rate (good at rates near
0 or 1 and for small counts), the normal approximation for the mean reciprocal rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Z95 = 1.959963984540054  # the two-sided 95 % quantile of the standard normal
Bucket = Literal["hour", "day", "week"]
_BUCKET_SECONDS = {"hour": 3_600, "day": 86_400, "week": 7 * 86_400}
_MONDAY_OFFSET = 3 * 86_400  # 1970-01-01 was a Thursday: weeks start on Monday 00:00 UTC


def window_length(shown_at: float, followed_at: Sequence[float], event_window: int,
                  time_window: float) -> int:
    """How many of the events after an impression (their times, in order) it counts: the
    first `event_window`, up to `time_window` seconds after `shown_at` (epoch seconds)."""
    count = 0
    for moment in followed_at[:event_window]:
        if moment - shown_at > time_window:
            break
        count += 1
    return count


def is_settled(followed: int, shown_at: float, now: float, event_window: int,
               time_window: float) -> bool:
    """Whether an impression's window has closed by `now`: `followed` (events found after it,
    up to its time window) reached `event_window`, or its time window is over."""
    return followed >= event_window or now - shown_at >= time_window


def hit_ranks(recommended: Sequence[Sequence[str]], followed: Sequence[Sequence[str]],
              k: int) -> np.ndarray:
    """Per impression: the rank (1 = first) of the best-placed of its first `k` items that
    the user's counted next events include, 0 without a hit. int64[n]."""
    if len(recommended) != len(followed):
        raise ValueError("one list of next events per impression")
    ranks = np.zeros(len(recommended), dtype=np.int64)
    for row, (items, events) in enumerate(zip(recommended, followed, strict=True)):
        wanted = set(events)
        for position, item_id in enumerate(items[:k]):
            if item_id in wanted:
                ranks[row] = position + 1
                break
    return ranks


def reciprocal_ranks(ranks: np.ndarray) -> np.ndarray:
    """1 / rank for hits, 0 for misses: float64[n]."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out = np.zeros_like(ranks)
    np.divide(1.0, ranks, out=out, where=ranks > 0)
    return out


def wilson_interval(hits: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson's score interval for a proportion hits / n (None when n is 0)."""
    if n <= 0:
        return None
    if not 0 <= hits <= n:
        raise ValueError("hits must be between 0 and n")
    p = hits / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: np.ndarray, z: float = Z95, low: float = 0.0, high: float = 1.0
                  ) -> tuple[float, float] | None:
    """Normal-approximation interval of the mean of `values` (None when empty), clipped to
    [low, high]; a single value gives the whole range (no spread to estimate)."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n == 0:
        return None
    if n == 1:
        return low, high
    mean = float(values.mean())
    half = z * float(values.std(ddof=1)) / math.sqrt(n)
    return max(low, mean - half), min(high, mean + half)


@dataclass(frozen=True, slots=True)
class OnlineSummary:
    """Settled impressions of one version (or one bucket of it)."""

    impressions: int
    hits: int
    hit_rate: float | None
    hit_rate_ci: tuple[float, float] | None
    mrr: float | None
    mrr_ci: tuple[float, float] | None


def summarize(ranks: np.ndarray, z: float = Z95) -> OnlineSummary:
    """Hits, hit rate and mean reciprocal rank, with intervals, of settled impressions'
    ranks (`hit_ranks`)."""
    ranks = np.asarray(ranks, dtype=np.int64)
    n = len(ranks)
    hits = int((ranks > 0).sum())
    rr = reciprocal_ranks(ranks)
    return OnlineSummary(
        impressions=n, hits=hits, hit_rate=hits / n if n else None,
        hit_rate_ci=wilson_interval(hits, n, z), mrr=float(rr.mean()) if n else None,
        mrr_ci=mean_interval(rr, z))


def bucket_starts(times: np.ndarray, bucket: Bucket) -> np.ndarray:
    """The start (epoch seconds, UTC) of the hour, day or ISO week (from Monday) of each
    time: float64[n]."""
    size = _BUCKET_SECONDS[bucket]
    times = np.asarray(times, dtype=np.float64)
    offset = _MONDAY_OFFSET if bucket == "week" else 0
    return np.floor((times + offset) / size) * size - offset


def series(times: np.ndarray, ranks: np.ndarray, bucket: Bucket, z: float = Z95
           ) -> list[tuple[float, OnlineSummary]]:
    """`summarize` per time bucket of the impressions' times, oldest bucket first (buckets
    without impressions are left out)."""
    times = np.asarray(times, dtype=np.float64)
    ranks = np.asarray(ranks, dtype=np.int64)
    if len(times) != len(ranks):
        raise ValueError("one time per rank")
    starts = bucket_starts(times, bucket)
    return [(float(start), summarize(ranks[starts == start], z))
            for start in np.unique(starts)]
