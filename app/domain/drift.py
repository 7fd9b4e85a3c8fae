"""Interest-drift decisions over per-event drift probabilities (plain numpy).

The drift head gives, for each event ``t`` of a user's time-ordered history, the probability
that the user's interests changed at (or just before) ``t``. These functions turn that trace
and a calibrated threshold into alarms and change points. Evaluation and the service call the
same functions with the same arguments, so an evaluated alarm is a served alarm.

Alarm rule (online, causal): event ``t`` raises an alarm when ``p[t] >= threshold``, the user
has at least ``min_events`` events up to and including ``t`` (fewer says little about what a
user likes), and no alarm was raised in the ``cooldown`` events before ``t`` (one change
should give one alarm, not a burst).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

DriftKind = Literal["abrupt", "gradual", "recurring"]

MIN_EVENTS = 10  # no decision before a user has this many events
COOLDOWN = 10  # events after an alarm during which no new alarm is raised
ABRUPT_MAX_RISE = 2  # without a surprise trace: a score that climbs within 2 events is abrupt
KIND_AFTER = 5  # events after a change point read to tell abrupt from gradual


@dataclass(frozen=True, slots=True)
class ChangePoint:
    """A detected change: ``index`` is the event (0-based) at which the alarm was raised;
    ``located`` the event at which the detector places the change when that is earlier (a
    detector that reads a run of events after the change, such as BOCPD, raises its alarm
    some events later); None: at the alarm itself."""

    index: int
    score: float
    kind: DriftKind
    located: int | None = None

    @property
    def change_index(self) -> int:
        """The event the interests changed at: what is recorded and scored."""
        return self.index if self.located is None else self.located


def alarm_indices(
    probs: np.ndarray,
    threshold: float,
    min_events: int = MIN_EVENTS,
    cooldown: int = COOLDOWN,
) -> np.ndarray:
    """Events that raise an alarm.

    Args:
        probs: float[L] per-event drift probabilities (or any score; higher = more change).
        threshold: alarm when ``probs[t] >= threshold``.
        min_events: the first alarm can come at index ``min_events - 1`` at the earliest.
        cooldown: after an alarm at ``t`` the next one can come at ``t + cooldown + 1``.
    Returns:
        int64[K] increasing event indices.
    """
    probs = np.asarray(probs, dtype=np.float64)
    candidates = np.flatnonzero(probs >= threshold)
    alarms: list[int] = []
    for index in candidates[candidates >= min_events - 1]:
        if not alarms or index - alarms[-1] > cooldown:
            alarms.append(int(index))
    return np.asarray(alarms, dtype=np.int64)


def rise_length(probs: np.ndarray, index: int, threshold: float) -> int:
    """How many events the score took to climb from below half the threshold up to ``index``.

    Counts back from ``index`` while the score stays at or above ``threshold / 2``; an abrupt
    change lifts the score in one or two events, a gradual one over several.
    """
    probs = np.asarray(probs, dtype=np.float64)
    floor = threshold / 2.0
    start = index
    while start > 0 and probs[start - 1] >= floor:
        start -= 1
    return index - start + 1


def kind_score(surprise: np.ndarray, index: int, after: int = KIND_AFTER) -> float | None:
    """Mean surprise of the ``after`` events following a change point minus the mean before it.

    surprise: float[L] per-event -log p(item_t | events < t) from the sequence model. After an
    abrupt switch the events come from one coherent new taste that the model soon follows;
    during a gradual drift old and new tastes alternate and it stays surprised for longer.
    None when no event follows the change point yet (or none precedes it).
    """
    surprise = np.asarray(surprise, dtype=np.float64)
    later = surprise[index + 1 : index + 1 + after]
    if len(later) == 0 or index == 0:
        return None
    return float(later.mean() - surprise[:index].mean())


def classify_kind(
    probs: np.ndarray,
    index: int,
    threshold: float,
    surprise: np.ndarray | None = None,
    kind_threshold: float | None = None,
) -> DriftKind:
    """``abrupt`` or ``gradual`` for the change point at ``index``.

    With a surprise trace and a calibrated ``kind_threshold``: gradual when
    :func:`kind_score` is above it. Otherwise (or before any event follows the change):
    abrupt when the probability rose to the alarm within ``ABRUPT_MAX_RISE`` events.
    """
    if surprise is not None and kind_threshold is not None:
        score = kind_score(surprise, index)
        if score is not None:
            return "gradual" if score > kind_threshold else "abrupt"
    rise = rise_length(probs, index, threshold)
    return "abrupt" if rise <= ABRUPT_MAX_RISE else "gradual"


def detect_change_points(
    probs: np.ndarray,
    threshold: float,
    min_events: int = MIN_EVENTS,
    cooldown: int = COOLDOWN,
    surprise: np.ndarray | None = None,
    kind_threshold: float | None = None,
) -> list[ChangePoint]:
    """All change points of a trace (float[L]), oldest first (see :func:`classify_kind`)."""
    probs = np.asarray(probs, dtype=np.float64)
    return [
        ChangePoint(int(i), float(probs[i]),
                    classify_kind(probs, int(i), threshold, surprise, kind_threshold))
        for i in alarm_indices(probs, threshold, min_events, cooldown)
    ]


def detect_change_point(
    probs: np.ndarray,
    threshold: float,
    min_events: int = MIN_EVENTS,
    cooldown: int = COOLDOWN,
    surprise: np.ndarray | None = None,
    kind_threshold: float | None = None,
) -> ChangePoint | None:
    """The most recent change point of a trace (float[L]), or None when there is none."""
    points = detect_change_points(probs, threshold, min_events, cooldown, surprise,
                                  kind_threshold)
    return points[-1] if points else None


def topic_weights(event_topics: Sequence[Sequence[int]], n_topics: int) -> np.ndarray:
    """Share of each topic in a run of events: float[n_topics], sums to 1 (zeros if empty).

    Each event spreads a weight of 1 evenly over its topic ids (a film with two genres gives
    0.5 to each); events with no topic count for nothing.
    """
    weights = np.zeros(n_topics, dtype=np.float64)
    for topics in event_topics:
        if len(topics):
            np.add.at(weights, np.asarray(topics, dtype=np.int64), 1.0 / len(topics))
    total = weights.sum()
    return weights / total if total > 0 else weights


def interests_around(
    event_topics: Sequence[Sequence[int]],
    change_index: int,
    n_topics: int,
    window: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Topic weights before and after a change point: (from_interests, to_interests).

    ``before`` covers events ``[change_index - window, change_index)``, ``after`` covers
    ``[change_index, change_index + window)`` (the whole side when ``window`` is None).
    """
    start = 0 if window is None else max(0, change_index - window)
    stop = len(event_topics) if window is None else change_index + window
    before = topic_weights(event_topics[start:change_index], n_topics)
    after = topic_weights(event_topics[change_index:stop], n_topics)
    return before, after


def top_topics(weights: np.ndarray, names: Sequence[str], k: int = 3) -> list[tuple[str, float]]:
    """The ``k`` heaviest topics as (name, weight), heaviest first, zero weights left out."""
    order = np.argsort(-np.asarray(weights), kind="stable")[:k]
    return [(names[i], float(weights[i])) for i in order if weights[i] > 0]
