"""Interest profiles on hand-made histories: decay by event time, windows, trends, contexts."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from app.core.config import Settings
from app.domain import profiles
from app.domain.profiles import CONTEXTS, DAY_S, context_index, top_topic, topic_weights

# The service's defaults (the settings are where they are stated); a test may override them.
build_profile = partial(
    profiles.build_profile,
    half_life_days=Settings.model_fields["profile_half_life_days"].default,
    short_window=Settings.model_fields["short_term_events"].default,
)

NAMES = ["Comedy", "Drama", "Sci-Fi", "Thriller", "War"]
COMEDY, DRAMA, SCIFI, THRILLER, WAR = range(5)
T0 = 893_286_638.0  # an ml-100k era timestamp (1998)


def _trend_history() -> tuple[np.ndarray, np.ndarray]:
    """40 events before the last-20 window and 20 in it, one minute apart."""
    before = [DRAMA] * 20 + [COMEDY] * 8 + [THRILLER] * 4 + [WAR] * 8
    window = [DRAMA] * 10 + [THRILLER] * 5 + [SCIFI] * 4 + [WAR] * 1
    topics = np.array(before + window)
    return topics, T0 + 60.0 * np.arange(len(topics))


def test_decay_runs_on_event_time_so_shifting_the_history_changes_nothing() -> None:
    topics = np.array([DRAMA, COMEDY, DRAMA, WAR, SCIFI, SCIFI])
    times = T0 + DAY_S * np.array([0.0, 10, 45, 80, 100, 100.5])
    old = build_profile(topics, times, NAMES, short_window=3)
    shifted = build_profile(topics, times + 3650 * DAY_S, NAMES, short_window=3)
    assert shifted.as_of == pytest.approx(old.as_of + 3650 * DAY_S)
    for a, b in [(old.long_term, shifted.long_term), (old.short_term, shifted.short_term)]:
        assert [t for t, _ in a] == [t for t, _ in b]
        assert [w for _, w in a] == pytest.approx([w for _, w in b])
    assert [(t.topic, t.label) for t in old.trends] == [(t.topic, t.label) for t in shifted.trends]
    assert old.contexts.keys() == shifted.contexts.keys()


def test_long_term_halves_per_half_life_and_sums_to_one() -> None:
    topics = np.array([COMEDY, DRAMA])
    times = np.array([T0, T0 + 30 * DAY_S])
    profile = build_profile(topics, times, NAMES, half_life_days=30)
    assert profile.long_term == [("Drama", pytest.approx(2 / 3)), ("Comedy", pytest.approx(1 / 3))]
    assert sum(w for _, w in profile.long_term) == pytest.approx(1.0)
    assert profile.as_of == T0 + 30 * DAY_S


def test_ties_are_broken_by_name_and_top_n_renormalises() -> None:
    topics = np.array([WAR, DRAMA, COMEDY, COMEDY])
    times = np.full(4, T0)
    profile = build_profile(topics, times, NAMES)
    assert [t for t, _ in profile.long_term] == ["Comedy", "Drama", "War"]
    cut = build_profile(topics, times, NAMES, top_n=2)
    assert cut.long_term == [("Comedy", pytest.approx(2 / 3)), ("Drama", pytest.approx(1 / 3))]


def test_event_weights_scale_shares() -> None:
    profile = build_profile(np.array([COMEDY, DRAMA]), np.array([T0, T0]), NAMES,
                            weights=np.array([1.0, 3.0]))
    assert profile.short_term == [("Drama", pytest.approx(0.75)), ("Comedy", pytest.approx(0.25))]


def test_short_term_is_the_last_window_of_events() -> None:
    topics, times = _trend_history()
    profile = build_profile(topics, times, NAMES, short_window=20)
    assert dict(profile.short_term) == pytest.approx(
        {"Drama": 0.5, "Thriller": 0.25, "Sci-Fi": 0.2, "War": 0.05})
    assert sum(w for _, w in profile.short_term) == pytest.approx(1.0)


def test_trend_labels() -> None:
    topics, times = _trend_history()
    trends = {t.topic: t for t in build_profile(topics, times, NAMES, short_window=20).trends}
    assert {name: t.label for name, t in trends.items()} == {
        "Drama": "stable", "Thriller": "rising", "Sci-Fi": "new", "War": "declining",
        "Comedy": "dormant"}
    assert trends["Thriller"].change == pytest.approx(0.25 - 9 / 60, abs=1e-3)
    assert trends["Comedy"].short_weight == 0.0


def test_trends_without_history_before_the_window_are_never_new() -> None:
    topics = np.array([DRAMA, DRAMA, SCIFI])
    labels = {t.topic: t.label for t in build_profile(topics, np.full(3, T0), NAMES).trends}
    assert labels == {"Drama": "stable", "Sci-Fi": "stable"}


def test_contexts_by_hour_of_day_with_a_time_zone() -> None:
    hours = np.array([6, 13, 18, 23, 3])  # morning, afternoon, evening, night, night (UTC)
    times = 86_400.0 * 10_000 + 3600.0 * hours  # a UTC midnight plus the hours
    topics = np.array([COMEDY, DRAMA, SCIFI, WAR, THRILLER])
    assert list(context_index(times)) == [0, 1, 2, 3, 3]
    order = np.argsort(times)  # time order: the 03h event first
    profile = build_profile(topics[order], times[order], NAMES)
    assert set(profile.contexts) == {name for name, _, _ in CONTEXTS}
    assert profile.contexts["morning"] == [("Comedy", 1.0)]
    night = dict(profile.contexts["night"])  # decayed: the later (23h) War event weighs more
    assert list(night) == ["War", "Thriller"] and night["War"] > 0.5
    assert profile.context_events == {"morning": 1, "afternoon": 1, "evening": 1, "night": 2}
    # UTC+2: 06->08h, 13->15h, 18->20h, 23->01h (next day), 03->05h (morning from 5h)
    assert list(context_index(times, tz_offset_hours=2)) == [0, 1, 2, 3, 0]
    # UTC-5: 06->01h, 13->08h, 18->13h, 23->18h, 03->22h (previous day)
    assert list(context_index(times, tz_offset_hours=-5)) == [3, 0, 1, 2, 3]


def test_empty_and_single_event_histories() -> None:
    empty = build_profile(np.array([], dtype=int), np.array([]), NAMES)
    assert empty.as_of is None and empty.n_events == 0
    assert empty.long_term == empty.short_term == empty.trends == []
    assert all(v == [] for v in empty.contexts.values())
    one = build_profile(np.array([WAR]), np.array([T0]), NAMES)
    assert one.long_term == one.short_term == [("War", 1.0)]
    assert [(t.topic, t.label, t.change) for t in one.trends] == [("War", "stable", 0.0)]


def test_invalid_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="time order"):
        build_profile(np.array([0, 1]), np.array([T0 + 1, T0]), NAMES)
    with pytest.raises(ValueError, match="topic ids"):
        build_profile(np.array([7]), np.array([T0]), NAMES)


def test_topic_weights_and_top_topic() -> None:
    weights = topic_weights(np.array([SCIFI, DRAMA, SCIFI, DRAMA, WAR]), NAMES)
    assert list(weights) == ["Drama", "Sci-Fi", "War"]  # tie Drama/Sci-Fi by name
    assert weights == pytest.approx({"Drama": 0.4, "Sci-Fi": 0.4, "War": 0.2})
    assert top_topic(weights) == "Drama"
    assert topic_weights(np.array([], dtype=int), NAMES) == {}
    assert top_topic({}) is None
