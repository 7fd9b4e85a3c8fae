"""A user's interest profile from their event history (plain numpy, no model needed).

Inputs, for one user, oldest event first (ties in ingestion order):

- ``topic_ids``: int[n], the topic of each event's item (an index into ``topic_names``);
- ``timestamps``: float[n], event times in epoch seconds (non-decreasing);
- ``weights``: optional float[n] >= 0 per event (e.g. ratings); 1 per event when omitted.

Decay runs on EVENT time: every weight is relative to ``as_of``, the user's last event, never
to the wall clock, so an old dataset (ml-100k is from 1998) gives the same profile as the same
history shifted to today.

Weights lists are ``[(topic, weight), ...]`` summing to 1, heaviest first, ties by topic name;
topics whose share is numerically zero (< ``MIN_WEIGHT``) are dropped and the rest
renormalised. An optional ``top_n`` keeps the heaviest ``n`` and renormalises them too.

Empty history: ``as_of`` is None and every weight list, trend list and context is empty.
One event: long and short term are both ``[(topic, 1.0)]`` and its trend is ``stable``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

TrendLabel = Literal["rising", "declining", "stable", "new", "dormant"]
TopicWeights = list[tuple[str, float]]

DAY_S = 86_400.0
TOLERANCE = 0.05  # |short - long| above this is a real rise / decline
PRESENCE = 0.02  # a share below this counts as "absent" (for new / dormant)
MIN_WEIGHT = 1e-6  # shares below this are numerical dust and are dropped
# Time-of-day contexts as [start, end) hours; night wraps around midnight.
CONTEXTS: tuple[tuple[str, int, int], ...] = (
    ("morning", 5, 12), ("afternoon", 12, 17), ("evening", 17, 22), ("night", 22, 5))


@dataclass(frozen=True, slots=True)
class TopicTrend:
    """How one topic moved: ``change = short_weight - long_weight``."""

    topic: str
    label: TrendLabel
    long_weight: float
    short_weight: float
    change: float


@dataclass(frozen=True, slots=True)
class InterestProfile:
    """See the module docstring; ``contexts`` always has the four keys of ``CONTEXTS``."""

    as_of: float | None
    n_events: int
    long_term: TopicWeights
    short_term: TopicWeights
    trends: list[TopicTrend]
    contexts: dict[str, TopicWeights] = field(default_factory=dict)
    context_events: dict[str, int] = field(default_factory=dict)


def decay_weights(timestamps: np.ndarray, as_of: float, half_life_s: float) -> np.ndarray:
    """float[n]: ``0.5 ** ((as_of - t) / half_life_s)``; 1 for an event at ``as_of``."""
    age = as_of - np.asarray(timestamps, dtype=np.float64)
    return np.power(0.5, np.maximum(age, 0.0) / half_life_s)


def topic_mass(topic_ids: np.ndarray, n_topics: int, weights: np.ndarray | None = None
               ) -> np.ndarray:
    """float[n_topics]: weight share of each topic, summing to 1 (all zeros if no weight)."""
    ids = np.asarray(topic_ids, dtype=np.int64)
    w = np.ones(len(ids)) if weights is None else np.asarray(weights, dtype=np.float64)
    mass = np.bincount(ids, weights=w, minlength=n_topics).astype(np.float64)
    total = mass.sum()
    return mass / total if total > 0 else mass


def ranked(mass: np.ndarray, topic_names: Sequence[str], top_n: int | None = None
           ) -> TopicWeights:
    """``[(topic, weight)]`` heaviest first (ties by name), dust dropped, renormalised."""
    keep = [i for i in range(len(mass)) if mass[i] >= MIN_WEIGHT]
    keep.sort(key=lambda i: (-mass[i], topic_names[i]))
    keep = keep[:top_n] if top_n is not None else keep
    total = float(sum(mass[i] for i in keep))
    return [(topic_names[i], float(mass[i]) / total) for i in keep]


def topic_weights(topic_ids: np.ndarray, topic_names: Sequence[str],
                  weights: np.ndarray | None = None, top_n: int | None = None
                  ) -> dict[str, float]:
    """Undecayed topic shares of a run of events (e.g. the interests before / after a drift),
    as an insertion-ordered dict: heaviest first, ties by name, summing to 1 ({} if empty)."""
    _check_ids(np.asarray(topic_ids), len(topic_names))
    return dict(ranked(topic_mass(topic_ids, len(topic_names), weights), topic_names, top_n))


def top_topic(weights: dict[str, float]) -> str | None:
    """The heaviest topic of a weights dict (ties by name), None when empty."""
    return min(weights, key=lambda t: (-weights[t], t)) if weights else None


def context_index(timestamps: np.ndarray, tz_offset_hours: float = 0.0) -> np.ndarray:
    """int[n]: index into ``CONTEXTS`` of each event's local hour (UTC + offset)."""
    seconds = np.asarray(timestamps, dtype=np.float64) + tz_offset_hours * 3600.0
    hours = np.floor(np.mod(seconds, DAY_S) / 3600.0).astype(np.int64)
    out = np.full(len(hours), len(CONTEXTS) - 1, dtype=np.int64)  # night unless matched
    for index, (_, start, end) in enumerate(CONTEXTS[:-1]):
        out[(hours >= start) & (hours < end)] = index
    return out


def topic_trends(long_mass: np.ndarray, short_mass: np.ndarray, before_mass: np.ndarray | None,
                 topic_names: Sequence[str], tolerance: float = TOLERANCE,
                 presence: float = PRESENCE) -> list[TopicTrend]:
    """Label each topic's movement, comparing float[n_topics] shares.

    ``long_mass`` (L): decayed shares over the whole history; ``short_mass`` (S): shares over
    the short-term window; ``before_mass`` (B): decayed shares over the events BEFORE the
    window, None when the window covers the whole history. ``change = S - L``. Rules, first
    match wins:

    1. ``new``: B exists, ``S >= presence`` and ``B < presence`` (it showed up recently and
       was absent before the window);
    2. ``dormant``: ``S == 0`` (no event of it in the window) and ``L >= presence``;
    3. ``rising``: ``change > tolerance``; 4. ``declining``: ``change < -tolerance``;
    5. ``stable`` otherwise.

    Listed: topics with ``S > 0`` or ``L >= presence``; largest ``|change|`` first, ties by name.
    """
    trends = []
    for i, name in enumerate(topic_names):
        long_w, short_w = float(long_mass[i]), float(short_mass[i])
        if short_w < MIN_WEIGHT and long_w < presence:
            continue
        change = short_w - long_w
        if before_mass is not None and short_w >= presence and before_mass[i] < presence:
            label: TrendLabel = "new"
        elif short_w < MIN_WEIGHT:
            label = "dormant"
        elif abs(change) <= tolerance:
            label = "stable"
        else:
            label = "rising" if change > 0 else "declining"
        trends.append(TopicTrend(name, label, long_w, short_w, change))
    trends.sort(key=lambda t: (-abs(t.change), t.topic))
    return trends


def build_profile(
    topic_ids: np.ndarray,
    timestamps: np.ndarray,
    topic_names: Sequence[str],
    weights: np.ndarray | None = None,
    *,
    half_life_days: float,
    short_window: int,
    tolerance: float = TOLERANCE,
    presence: float = PRESENCE,
    top_n: int | None = None,
    tz_offset_hours: float = 0.0,
) -> InterestProfile:
    """The interest profile of one history (see the module docstring for the inputs).

    ``half_life_days`` and ``short_window`` have no defaults here: the service's come from its
    settings (``profile_half_life_days``, ``short_term_events``), stated once there.

    - ``long_term``: each event weighs ``weights[t] * 0.5 ** ((as_of - t) / half_life)``.
    - ``short_term``: the last ``short_window`` EVENTS, each weighing ``weights[t]`` (no decay):
      a count window rather than a short half-life, because users rate in bursts (ml-100k users
      often rate dozens of films in an hour) where any time window would be all or nothing.
    - ``trends``: see ``topic_trends``.
    - ``contexts``: long-term (decayed) shares of the events in each time-of-day context
      (local hour = UTC + ``tz_offset_hours``); an empty list for a context without events.
    """
    ids, ts, w = _validated(topic_ids, timestamps, weights, len(topic_names))
    empty_contexts: dict[str, TopicWeights] = {name: [] for name, _, _ in CONTEXTS}
    if len(ids) == 0:
        return InterestProfile(None, 0, [], [], [], empty_contexts,
                               {name: 0 for name, _, _ in CONTEXTS})
    n_topics, as_of = len(topic_names), float(ts[-1])
    decayed = w * decay_weights(ts, as_of, half_life_days * DAY_S)
    long_mass = topic_mass(ids, n_topics, decayed)
    cut = max(0, len(ids) - short_window)
    short_mass = topic_mass(ids[cut:], n_topics, w[cut:])
    before_mass = topic_mass(ids[:cut], n_topics, decayed[:cut]) if cut > 0 else None
    contexts = context_index(ts, tz_offset_hours)
    by_context = {name: ranked(topic_mass(ids[contexts == c], n_topics, decayed[contexts == c]),
                               topic_names, top_n)
                  for c, (name, _, _) in enumerate(CONTEXTS)}
    counts = {name: int(np.sum(contexts == c)) for c, (name, _, _) in enumerate(CONTEXTS)}
    return InterestProfile(
        as_of=as_of,
        n_events=len(ids),
        long_term=ranked(long_mass, topic_names, top_n),
        short_term=ranked(short_mass, topic_names, top_n),
        trends=topic_trends(long_mass, short_mass, before_mass, topic_names, tolerance, presence),
        contexts=by_context,
        context_events=counts,
    )


def _validated(topic_ids: np.ndarray, timestamps: np.ndarray, weights: np.ndarray | None,
               n_topics: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = np.asarray(topic_ids, dtype=np.int64).reshape(-1)
    ts = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    w = np.ones(len(ids)) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    if not len(ids) == len(ts) == len(w):
        raise ValueError("topic_ids, timestamps and weights need one entry per event")
    if np.any(np.diff(ts) < 0):
        raise ValueError("timestamps must be in time order (oldest first)")
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("event weights must be finite and >= 0")
    _check_ids(ids, n_topics)
    return ids, ts, w


def _check_ids(ids: np.ndarray, n_topics: int) -> None:
    if len(ids) and (ids.min() < 0 or ids.max() >= n_topics):
        raise ValueError(f"topic ids must lie in [0, {n_topics})")
