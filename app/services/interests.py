"""Profiles, drift checks and recommendations: the store's history through the served model
and the domain functions. No HTTP here; routers call these and map errors to responses."""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.exceptions import UnknownItems, UnknownUser
from app.domain import drift as drift_domain
from app.domain import profiles, ranking, similarity
from app.schemas.serving import (
    ChangePointOut,
    DriftOut,
    InterestProfileOut,
    ProfileItem,
    Reason,
    RecommendationsOut,
    RecommendedItem,
    TopicTrendOut,
    TopicWeight,
)
from app.services import similar
from app.services.caches import str_bytes
from app.services.change_feed import ChangeFeed
from app.services.model_manager import ServedModel
from app.store import drift_records, repository

PROFILE_EVENTS = 5_000  # the profile reads at most this many recent events
TOP_ITEMS = 10


@dataclass(frozen=True, slots=True)
class History:
    """A user's recent events, oldest first (ties in ingestion order)."""

    event_ids: list[str]
    item_ids: list[str]
    timestamps: list[float]
    values: list[float | None]
    total: int  # all the user's events, of which these are the last len(item_ids)

    @property
    def offset(self) -> int:
        return self.total - len(self.item_ids)


def load_history(session: Session, user_id: str, limit: int, total: int | None = None
                 ) -> History:
    """The user's last `limit` events (`total`: their event count, when the caller has it)."""
    rows = repository.user_history_rows(session, user_id, limit)
    if not rows:
        raise UnknownUser(user_id)
    if total is None:
        total = len(rows) if len(rows) < limit else repository.count_user_events(session, user_id)
    return History([r[0] for r in rows], [r[1] for r in rows], [r[2].timestamp() for r in rows],
                   [r[3] for r in rows], total)


def _topics_of(model: ServedModel, item_ids: Sequence[str]) -> np.ndarray:
    topics = [model.bundle.item_topic(item_id) for item_id in item_ids]
    return np.asarray([-1 if t is None else t for t in topics], dtype=np.int64)


def _weights_list(weights: np.ndarray, names: Sequence[str]) -> list[TopicWeight]:
    return [TopicWeight(topic=name, weight=weight)
            for name, weight in drift_domain.top_topics(weights, names, k=len(names))]


def _as_time(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=UTC)


# ------------------------------------------------------------------------------ profile
def interest_profile(session: Session, model: ServedModel, *, user_id: str,
                     settings: Settings) -> InterestProfileOut:
    history = load_history(session, user_id, PROFILE_EVENTS)
    topics = _topics_of(model, history.item_ids)
    known = topics >= 0
    names = model.bundle.topics.names
    timestamps = np.asarray(history.timestamps)[known]
    profile = profiles.build_profile(
        topics[known], timestamps, names,
        half_life_days=settings.profile_half_life_days,
        short_window=settings.short_term_events,
    )
    return InterestProfileOut(
        user_id=user_id, model_version=model.version,
        as_of=_as_time(history.timestamps[-1]), event_count=history.total,
        enough_events=bool(known.any()),
        long_term=[TopicWeight(topic=t, weight=w) for t, w in profile.long_term],
        short_term=[TopicWeight(topic=t, weight=w) for t, w in profile.short_term],
        trends=[TopicTrendOut(topic=t.topic, trend=t.label, change=t.change)  # type: ignore[arg-type]
                for t in profile.trends],
        contexts={name: [TopicWeight(topic=t, weight=w) for t, w in weights]
                  for name, weights in profile.contexts.items()},
        top_items=_top_items(session, model, history, settings),
    )


def _top_items(session: Session, model: ServedModel, history: History,
               settings: Settings) -> list[ProfileItem]:
    """The items that weigh most in the long-term profile: recency-decayed, ratings counted."""
    times = np.asarray(history.timestamps)
    decay = profiles.decay_weights(times, float(times[-1]),
                                   settings.profile_half_life_days * profiles.DAY_S)
    strength = decay * np.asarray([v if v and v > 0 else 1.0 for v in history.values])
    best: dict[str, float] = {}
    for item_id, weight in zip(history.item_ids, strength, strict=True):
        best[item_id] = max(best.get(item_id, 0.0), float(weight))
    chosen = sorted(best, key=lambda i: (-best[i], i))[:TOP_ITEMS]
    titles = repository.item_titles(session, chosen)
    return [ProfileItem(item_id=i, title=titles.get(i),
                        topic=_topic_name(model, i)) for i in chosen]


def _topic_name(model: ServedModel, item_id: str) -> str:
    topic = model.bundle.item_topic(item_id)
    return ranking.UNKNOWN_TOPIC if topic is None else model.bundle.topics.topic_name(topic)


# -------------------------------------------------------------------------------- drift
@dataclass(frozen=True, slots=True)
class DriftFinding:
    history: History
    probabilities: np.ndarray  # per encoded event (the model skips items it does not know)
    change: drift_domain.ChangePoint | None  # its index counts encoded events only
    position: int | None  # the change event's position in `history` (all events)
    before: np.ndarray
    after: np.ndarray


def find_drift(model: ServedModel, history: History, user_id: str | None = None
               ) -> DriftFinding:
    """The drift head's trace over the history's window and the calibrated decision rule.

    A user's trace is carried forward from their incremental state (app.services.
    interest_state: only events it has not seen go through the model); without a user id the
    window is replayed. The window is the last events up to `max_events`, its start moving in
    steps of half of that (app.ml.incremental.drift_window_start)."""
    bundle = model.bundle
    states = getattr(model, "interest_states", None)
    if states is None:  # a model object without incremental states (test doubles)
        return _replayed_drift(model, history)
    trace = states.trace(user_id, history.event_ids, history.item_ids, history.timestamps,
                         history.total)
    probs = trace.probabilities
    change = bundle.change_point(probs, trace.surprise)
    n_topics = len(bundle.topics.names)
    before = after = np.zeros(n_topics)
    position = None
    if change is not None:
        position = int(trace.positions[change.index])
        window = history.item_ids[trace.start:]
        event_topics = [[t] if t >= 0 else [] for t in _topics_of(model, window)]
        before, after = drift_domain.interests_around(event_topics, position - trace.start,
                                                      n_topics)
    return DriftFinding(history, probs, change, position, before, after)


def _replayed_drift(model: ServedModel, history: History) -> DriftFinding:
    """find_drift through the model's own `detect_drift` (the last `max_events` known events)."""
    bundle = model.bundle
    probs, change = model.detect_drift(history.item_ids, history.timestamps)
    n_topics = len(bundle.topics.names)
    before = after = np.zeros(n_topics)
    position = None
    if change is not None:
        known = [i for i, item_id in enumerate(history.item_ids)
                 if bundle.index_of(item_id) is not None]
        position = known[-bundle.drift.max_events:][change.index]
        event_topics = [[t] if t >= 0 else [] for t in _topics_of(model, history.item_ids)]
        before, after = drift_domain.interests_around(event_topics, position, n_topics)
    return DriftFinding(history, probs, change, position, before, after)


@dataclass(frozen=True, slots=True)
class _RememberedDrift:
    """What the drift cache keeps of a finding: not the history (the caller has it)."""

    probabilities: np.ndarray
    change: drift_domain.ChangePoint | None
    # the change event counted from the newest event (1 = the last one): callers read
    # histories of different lengths ending at the same event
    from_end: int | None
    before: np.ndarray
    after: np.ndarray


def drift_size(entry: _RememberedDrift) -> int:
    """Estimated bytes of a drift cache entry (measured in tests/test_memory_bounds.py)."""
    arrays = (entry.probabilities, entry.before, entry.after)
    return 600 + sum(a.nbytes + 112 for a in arrays) + (0 if entry.change is None else 400)


def cached_drift(model: ServedModel, user_id: str, history: History) -> DriftFinding:
    """find_drift, remembered per user for the latest state of their events (last event,
    event count) and the served version's decision settings, which an operator may tune on
    a loaded model. A newer state replaces the user's entry."""
    drift = model.bundle.drift
    state = (history.event_ids[-1], history.total, drift.threshold, drift.kind_threshold)
    entry = model.drift_cache.get(user_id, state, None)
    n = len(history.item_ids)
    if entry is None or (entry.from_end is not None and entry.from_end > n):
        finding = find_drift(model, history, user_id)
        from_end = None if finding.position is None else n - finding.position
        model.drift_cache.put(user_id, state, None, _RememberedDrift(
            finding.probabilities, finding.change, from_end, finding.before, finding.after))
        return finding
    position = None if entry.from_end is None else n - entry.from_end
    return DriftFinding(history, entry.probabilities, entry.change, position, entry.before,
                        entry.after)


def check_drift(session: Session, model: ServedModel, *, user_id: str,
                backfill: bool = False) -> DriftOut:
    """The user's drift status; a detected change point is recorded once, every check logged.

    Writes through `session`: the caller commits (one transaction for the whole check).
    `backfill` (the batch scan): the check and a new record are stamped with the user's last
    event time, the earliest moment a live check could have made them, not the wall clock."""
    history = load_history(session, user_id, model.bundle.drift.max_events)
    stamp = _as_time(history.timestamps[-1]) if backfill else None
    finding = cached_drift(model, user_id, history)
    names = model.bundle.topics.names
    change, position, record_id, change_point = finding.change, finding.position, None, None
    if change is not None and position is not None:
        at = _as_time(history.timestamps[position])
        record, _ = drift_records.record_drift(
            session, user_id=user_id, change_event_id=history.event_ids[position],
            change_at=at, change_index=history.offset + position, score=change.score,
            threshold=model.bundle.drift.threshold, kind=change.kind,
            model_version=model.version, detected_at=stamp,
            interests_before=dict(drift_domain.top_topics(finding.before, names, len(names))),
            interests_after=dict(drift_domain.top_topics(finding.after, names, len(names))),
        )
        record_id = record.id
        change_point = ChangePointOut(event_id=history.event_ids[position], timestamp=at,
                                      index=history.offset + position)
    # A live check is logged once per state of the user's events (and model version): a read
    # key repeating GET /drift/{user} does not grow the table. The backfill logs every check.
    if backfill or not drift_records.checked_since_last_event(session, user_id, model.version):
        drift_records.record_check(session, user_id=user_id, model_version=model.version,
                                   drift_detected=change is not None, record_id=record_id,
                                   checked_at=stamp)
    probs = finding.probabilities
    return DriftOut(
        user_id=user_id, model_version=model.version,
        drift_detected=change is not None,
        score=float(change.score if change else _eligible_max(probs, model)),
        threshold=float(model.bundle.drift.threshold),
        kind=change.kind if change else "none",  # type: ignore[arg-type]
        change_point=change_point,
        from_interests=_weights_list(finding.before, names) if change else [],
        to_interests=_weights_list(finding.after, names) if change else [],
        record_id=record_id, event_count=history.total,
        enough_events=len(history.item_ids) >= model.bundle.drift.min_events,
        min_events=model.bundle.drift.min_events,
    )


def _eligible_max(probs: np.ndarray, model: ServedModel) -> float:
    """Highest drift probability among events that may raise an alarm (after min_events)."""
    eligible = probs[model.bundle.drift.min_events - 1:]
    return float(eligible.max()) if len(eligible) else 0.0


# ---------------------------------------------------------------------- recommendations
Because = list[list[tuple[str, float]]]  # per ranked item: (history item, similarity)
EXPLAINED_BY = 2  # history items named per recommended item


def rank_items(model: ServedModel, *, item_ids: Sequence[str], timestamps: Sequence[float],
               k: int, exclude: set[str], strength: float,
               finding: DriftFinding | None, explain_window: int = 20,
               at: float | None = None, candidates: int = 200
               ) -> tuple[list[tuple[str, float, str]], bool, Because]:
    """Top-k (item_id, score, topic) for a history, whether drift changed the ranking, and
    per ranked item the (at most two) items of the last `explain_window` events of the
    history most like it in the served model's item table (why it is recommended).

    With a detected change in `finding`, scores tilt toward the post-change interests.
    `at`: the request time (epoch seconds), read by a model whose time bias uses it.
    With a top-k index on the model, only the `candidates` rows it finds (and as many more
    as are excluded) are scored and ranked, not the whole catalogue."""
    bundle = model.bundle
    post_change = finding.after if finding is not None and finding.change is not None else None
    item_topics = bundle.topics.item_topics
    # never recommended: retired items, items outside their availability window
    unavailable = model.availability.unavailable(datetime.now(UTC).timestamp())
    excluded = [i - 1 for i in (bundle.index_of(item) for item in exclude.union(unavailable))
                if i is not None]
    if model.topk is None:
        scores = model.score_next(item_ids, timestamps, at)
        result = ranking.rank(scores, item_topics, k, post_change, strength,
                              exclude=excluded, pad_index=None)
    else:  # the index's candidates, enough to fill k after every exclusion
        wanted = max(candidates, k) + len(excluded)
        rows, scores = model.score_candidates(item_ids, timestamps, at, wanted)
        result = ranking.rank_subset(rows, scores, item_topics, k, post_change, strength,
                                     exclude=excluded)
    names = ranking.explain_topics(result.indices, item_topics, bundle.topics.names)
    chosen = [(bundle.item_ids[int(i)], float(s), name)
              for i, s, name in zip(result.indices, result.scores, names, strict=True)]
    return chosen, result.drift_aware, _because(model, result.indices, item_ids,
                                                explain_window)


def _because(model: ServedModel, ranked: np.ndarray, history: Sequence[str], window: int
             ) -> Because:
    """The history items most like each ranked item (cosine over the item table)."""
    bundle = model.bundle
    positions = [i - 1 for i in (bundle.index_of(item) for item in history[-window:])
                 if i is not None]
    if not len(ranked) or not positions:
        return [[] for _ in ranked]
    table = similar.unit_table(model, "item_table")
    found = similarity.explain(table, [int(i) for i in ranked], positions, EXPLAINED_BY)
    return [[(bundle.item_ids[p], round(sim, 4)) for p, sim in entry] for entry in found]


def _drift_of(model: ServedModel, history: History, enabled: bool,
              user_id: str | None = None) -> DriftFinding | None:
    if not enabled or len(history.item_ids) < model.bundle.drift.min_events:
        return None
    return cached_drift(model, user_id, history) if user_id else find_drift(model, history)


ANY_TIME = (-math.inf, math.inf)  # a ranking that does not depend on the request time


@dataclass(frozen=True, slots=True)
class RememberedRanking:
    """A user's ranking and the state of their events it was computed from. `response` (with
    titles) is kept only when the state came from the change feed, which also tracks the
    catalogue; otherwise titles are read again on use. `valid`: the request times [start,
    end) it holds for (a model whose time bias reads the request time ranks differently once
    the gap from the request to one of the events changes bucket)."""

    state: tuple[Any, ...]
    chosen: list[tuple[str, float, str]]
    drift_aware: bool
    response: RecommendationsOut | None
    because: Because | None = None
    valid: tuple[float, float] = ANY_TIME

    def holds_at(self, at: float) -> bool:
        return self.valid[0] <= at < self.valid[1]


def ranking_size(entry: RememberedRanking) -> int:
    """Estimated bytes of a remembered ranking (measured in tests/test_memory_bounds.py):
    the strings it holds (ids and topic names are shared with the bundle, but counted) and
    per-item containers."""
    size = 400 + 8 * len(entry.state) + (0 if entry.valid is ANY_TIME else 104)
    for item_id, _, topic in entry.chosen:
        size += 150 + str_bytes(item_id, topic)
    for reasons in entry.because or ():
        size += 120 + sum(150 + str_bytes(item_id) for item_id, _ in reasons)
    if entry.response is not None:
        size += 1_050  # the model, its fields, the recommendation id (a UUID)
        for item in entry.response.items:
            size += 720 + str_bytes(item.title)  # a pydantic model: more than a dict
            for reason in item.because:
                size += 560 + str_bytes(reason.title)
    return size


def _ranking_variant(model: ServedModel, k: int, exclude_seen: bool, drift_aware: bool,
                     settings: Settings) -> tuple[Any, ...]:
    drift = model.bundle.drift
    # a window opening or closing changes what may be recommended
    closed = _digest(model.availability.closed_windows(datetime.now(UTC).timestamp()))
    return (k, exclude_seen, drift_aware, settings.drift_strength, drift.threshold,
            drift.kind_threshold, closed)


def _digest(ids: tuple[str, ...]) -> bytes:
    """A short fixed-size key for a set of ids (cache keys stay small whatever it holds)."""
    if not ids:
        return b""
    return hashlib.blake2b("\n".join(ids).encode(), digest_size=16).digest()


def _feed_state(feed: ChangeFeed | None, user_id: str) -> tuple[Any, ...] | None:
    """The user's event state as the change feed vouches for it (None: it cannot)."""
    token = feed.token(user_id) if feed is not None else None
    return None if token is None else ("feed", *token)


def _remembered(model: ServedModel, user_id: str, variant: tuple[Any, ...],
                state: tuple[Any, ...], at: float) -> RememberedRanking | None:
    entry: RememberedRanking | None = model.ranking_cache.get(user_id, state, variant)
    if entry is None or entry.state != state or not entry.holds_at(at):
        return None
    return entry


def request_time(at: datetime | None) -> float:
    """A request's time in epoch seconds: the one it gives, else now."""
    return (at or datetime.now(UTC)).timestamp()


def remembered_recommendations(model: ServedModel, *, feed: ChangeFeed | None, user_id: str,
                               k: int, exclude_seen: bool, drift_aware: bool,
                               settings: Settings, at: float | None = None
                               ) -> RecommendationsOut | None:
    """The answer for a user whose events have not changed since it was computed (and, for a
    model that reads the request time, whose ranking holds at `at`, default now), from memory
    alone (no database), when the change feed can vouch for that; else None."""
    state = _feed_state(feed, user_id)
    if state is None:
        return None
    variant = _ranking_variant(model, k, exclude_seen, drift_aware, settings)
    entry = _remembered(model, user_id, variant, state, request_time(None) if at is None else at)
    return None if entry is None or entry.response is None else _anew(entry.response)


def _anew(response: RecommendationsOut) -> RecommendationsOut:
    """A remembered answer as a new response: the same ranking under a recommendation id of
    its own (every response is an impression of its own)."""
    return response.model_copy(update={"recommendation_id": uuid.uuid4()})


def recommend_for_user(session: Session, model: ServedModel, *, user_id: str, k: int,
                       exclude_seen: bool, drift_aware: bool, settings: Settings,
                       feed: ChangeFeed | None = None, at: float | None = None
                       ) -> RecommendationsOut:
    # A ranking depends only on the user's events and the request's options. Its state is the
    # change feed's token for the user (taken before reading, so a change that lands meanwhile
    # invalidates it) or, without a live feed, one aggregate read of the user's events, which
    # changes with every new event since events are only ever added.
    state = _feed_state(feed, user_id)
    from_feed = state is not None
    total = None
    if state is None:
        total, last_seq = repository.user_event_state(session, user_id)
        if total == 0:
            raise UnknownUser(user_id)
        state = ("db", total, last_seq)
    variant = _ranking_variant(model, k, exclude_seen, drift_aware, settings)
    at = request_time(None) if at is None else at
    entry = _remembered(model, user_id, variant, state, at)
    if entry is not None:
        if entry.response is not None:
            return _anew(entry.response)
        return _recommendations(session, model, user_id, entry.chosen, entry.drift_aware,
                                entry.because)
    chosen, changed, because, valid = _rank_for_user(session, model, user_id, total, k,
                                                     exclude_seen, settings, drift_aware, at)
    response = _recommendations(session, model, user_id, chosen, changed, because)
    model.ranking_cache.put(user_id, state, variant, RememberedRanking(
        state, chosen, changed, response if from_feed else None, because, valid))
    return response


def _rank_for_user(session: Session, model: ServedModel, user_id: str, total: int | None,
                   k: int, exclude_seen: bool, settings: Settings, drift_aware: bool,
                   at: float) -> tuple[list[tuple[str, float, str]], bool, Because,
                                       tuple[float, float]]:
    """The ranking at request time `at`, and the request times it holds for."""
    bundle = model.bundle
    limit = max(bundle.drift.max_events, bundle.sequence_model.max_len)
    history = load_history(session, user_id, limit, total)
    exclude: set[str] = set()
    if exclude_seen:  # the window already holds every event when the user has few
        exclude = (set(history.item_ids) if history.offset == 0
                   else repository.user_item_ids(session, user_id))
    finding = _drift_of(model, history, drift_aware, user_id)
    chosen, changed, because = rank_items(
        model, item_ids=history.item_ids, timestamps=history.timestamps, k=k, exclude=exclude,
        strength=settings.drift_strength, finding=finding,
        explain_window=settings.short_term_events, at=at,
        candidates=settings.topk_candidates)
    valid = (bundle.request_time_validity(history.item_ids, history.timestamps, at)
             if bundle.uses_request_time else ANY_TIME)
    return chosen, changed, because, valid


def recommend_for_items(session: Session, model: ServedModel, *, item_ids: Sequence[str],
                        timestamps: Sequence[float] | None, k: int, exclude_seen: bool,
                        drift_aware: bool, settings: Settings,
                        user_id: str | None = None, at: float | None = None
                        ) -> RecommendationsOut:
    unknown = [i for i, item_id in enumerate(item_ids) if model.bundle.index_of(item_id) is None]
    if unknown:
        raise UnknownItems(unknown, [item_ids[i] for i in unknown])
    now = datetime.now(UTC).timestamp()
    at = now if at is None else at
    if timestamps is None:  # taken as one minute apart, ending now
        timestamps = [now - 60.0 * (len(item_ids) - 1 - i) for i in range(len(item_ids))]
    exclude = set(item_ids) if exclude_seen else set()
    window = History([""] * len(item_ids), list(item_ids), list(timestamps),
                     [None] * len(item_ids), len(item_ids))
    chosen, changed, because = rank_items(
        model, item_ids=item_ids, timestamps=timestamps, k=k, exclude=exclude,
        strength=settings.drift_strength, finding=_drift_of(model, window, drift_aware),
        explain_window=settings.short_term_events, at=at,
        candidates=settings.topk_candidates)
    return _recommendations(session, model, user_id, chosen, changed, because)


def _recommendations(session: Session, model: ServedModel, user_id: str | None,
                     chosen: list[tuple[str, float, str]], drift_aware: bool,
                     because: Because | None = None) -> RecommendationsOut:
    because = because if because is not None else [[] for _ in chosen]
    titles = repository.item_titles(session, [
        *(item_id for item_id, _, _ in chosen),
        *(item_id for reasons in because for item_id, _ in reasons)])
    return RecommendationsOut(
        user_id=user_id, model_version=model.version, recommendation_id=uuid.uuid4(),
        drift_aware=drift_aware,
        items=[RecommendedItem(
            item_id=item_id, title=titles.get(item_id), score=score, topic=topic,
            because=[Reason(item_id=reason, title=titles.get(reason), similarity=sim)
                     for reason, sim in reasons])
            for (item_id, score, topic), reasons in zip(chosen, because, strict=True)])

