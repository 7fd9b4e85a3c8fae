"""Online metrics per model version: the stored impressions against what their users did next.

The store streams each impression in the range with its first events after it
(`app.store.impressions.impressions_with_followups`); the domain decides hits, reciprocal
ranks, intervals and buckets (`app.domain.online_metrics`). No HTTP here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import numpy as np
from sqlalchemy.orm import Session

from app.core.exceptions import InvalidInput, query_problem
from app.domain import online_metrics as metrics
from app.schemas.common import MAX_EPOCH_SECONDS
from app.schemas.serving import (
    Interval,
    OnlineBucket,
    OnlineMetricsOut,
    VersionOnlineMetrics,
)
from app.store.impressions import FollowupRow, impressions_with_followups

CHUNK = 5_000  # impressions decided per call of the domain functions
Role = Literal["champion", "challenger"]


@dataclass(frozen=True, slots=True)
class Windows:
    """What counts after an impression: at most `events` events within `seconds`."""

    events: int
    seconds: float


@dataclass(slots=True)
class _Impression:
    version: str
    items: list[str]
    shown_at: float  # epoch seconds
    followed: list[str] = field(default_factory=list)
    followed_at: list[float] = field(default_factory=list)


@dataclass(slots=True)
class _Decided:
    """Per impression, column by column: its version, time, first-hit rank and whether its
    window has closed."""

    versions: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    ranks: list[np.ndarray] = field(default_factory=list)
    settled: list[bool] = field(default_factory=list)


def online_metrics(session: Session, *, since: datetime | None, until: datetime | None,
                   k: int, bucket: metrics.Bucket, windows: Windows,
                   roles: Mapping[str, Role], now: datetime | None = None
                   ) -> OnlineMetricsOut:
    """Impressions, hits, hit rate@k and MRR@k with 95 % intervals per version, and their
    series per bucket, for impressions made in [since, until). `roles`: what each version
    is served as now. A 422 naming `since` when it is after `until`."""
    if since is not None and until is not None and since > until:
        raise InvalidInput([query_problem("since", "since must not be after until",
                                          "value_error")], "since: after until")
    now = now or datetime.now(UTC)
    last_shown = now if until is None else min(until, now)
    horizon = datetime.fromtimestamp(
        min(last_shown.timestamp() + windows.seconds, MAX_EPOCH_SECONDS), tz=UTC)
    rows = impressions_with_followups(session, since=since, until=until, horizon=horizon,
                                      window=windows.events)
    decided = _Decided()
    for chunk in _chunks(_grouped(rows), CHUNK):
        _decide(chunk, k, windows, now.timestamp(), decided)
    versions = _summaries(decided, bucket, roles)
    return OnlineMetricsOut(
        since=since, until=until, k=k, bucket=bucket, event_window=windows.events,
        time_window_seconds=windows.seconds, confidence=0.95, versions=versions)


def _grouped(rows: Iterable[FollowupRow]) -> Iterator[_Impression]:
    """One impression per run of rows of its id (the store orders them so)."""
    current_id: int | None = None
    current: _Impression | None = None
    for impression_id, version, items, _k, shown_at, item_id, occurred_at in rows:
        if impression_id != current_id:
            if current is not None:
                yield current
            current_id = impression_id
            current = _Impression(version, items, shown_at.timestamp())
        if item_id is not None and occurred_at is not None and current is not None:
            current.followed.append(item_id)
            current.followed_at.append(occurred_at.timestamp())
    if current is not None:
        yield current


def _chunks(impressions: Iterator[_Impression], size: int) -> Iterator[list[_Impression]]:
    chunk: list[_Impression] = []
    for impression in impressions:
        chunk.append(impression)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _decide(chunk: list[_Impression], k: int, windows: Windows, now: float,
            into: _Decided) -> None:
    counted = [metrics.window_length(i.shown_at, i.followed_at, windows.events,
                                     windows.seconds) for i in chunk]
    into.ranks.append(metrics.hit_ranks([i.items for i in chunk],
                                        [i.followed[:n] for i, n in zip(chunk, counted,
                                                                        strict=True)], k))
    for impression, n in zip(chunk, counted, strict=True):
        into.versions.append(impression.version)
        into.times.append(impression.shown_at)
        into.settled.append(metrics.is_settled(n, impression.shown_at, now, windows.events,
                                               windows.seconds))


def _summaries(decided: _Decided, bucket: metrics.Bucket, roles: Mapping[str, Role]
               ) -> list[VersionOnlineMetrics]:
    if not decided.versions:
        return []
    versions = np.asarray(decided.versions, dtype=object)
    times = np.asarray(decided.times, dtype=np.float64)
    ranks = np.concatenate(decided.ranks)
    settled = np.asarray(decided.settled, dtype=bool)
    out = []
    for version in sorted(set(decided.versions), key=lambda v: _order(v, roles)):
        mine = versions == version
        counted = mine & settled
        summary = metrics.summarize(ranks[counted])
        out.append(VersionOnlineMetrics(
            model_version=version, role=roles.get(version), impressions=summary.impressions,
            pending=int((mine & ~settled).sum()), hits=summary.hits,
            hit_rate=summary.hit_rate, hit_rate_ci=_interval(summary.hit_rate_ci),
            mrr=summary.mrr, mrr_ci=_interval(summary.mrr_ci),
            series=[OnlineBucket(
                bucket_start=datetime.fromtimestamp(start, tz=UTC),
                impressions=part.impressions, hits=part.hits, hit_rate=part.hit_rate,
                hit_rate_ci=_interval(part.hit_rate_ci), mrr=part.mrr)
                for start, part in metrics.series(times[counted], ranks[counted], bucket)]))
    return out


def _order(version: str, roles: Mapping[str, Role]) -> tuple[int, int, str]:
    """The champion, the challenger, then past versions, newest (highest number) first."""
    rank = {"champion": 0, "challenger": 1}.get(roles.get(version, ""), 2)
    number = -int(version) if version.isdigit() else 0
    return rank, number, version


def _interval(bounds: tuple[float, float] | None) -> Interval | None:
    return None if bounds is None else Interval(low=bounds[0], high=bounds[1])
