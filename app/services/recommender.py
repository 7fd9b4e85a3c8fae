"""The served-version object: everything one loaded model version does for requests.

A `Recommender` owns, for one `ServedModel`, the forward passes (`Inference`: batching and
derived tables), the incremental drift states per user, and what it remembers per user (drift
findings and rankings, `app.services.remembered`). Every model-backed answer is a method of
it: profile, drift check, recommendations (remembered or ranked), similar items, timeline.
The model manager loads and swaps these objects; a catalogue swap asks the object for its
successor (`with_catalogue`), which decides what survives; an erasure calls `forget`.

No HTTP here: routers take the object for their user from a dependency and map errors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.core.exceptions import UnknownItems, UnknownUser
from app.domain import drift as drift_domain
from app.domain import profiles, ranking, similarity
from app.domain.availability import Availability
from app.ml.bundle import InterestModelBundle
from app.ml.topk import TopKIndex
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
from app.schemas.timeline import InterestTimelineOut
from app.services import remembered, timeline
from app.services.caches import UserStateCache
from app.services.change_feed import ChangeFeed
from app.services.inference import Inference
from app.services.interest_state import InterestStates
from app.services.item_titles import ItemTitles
from app.services.ranking_options import RankingOptions
from app.services.remembered import (
    ANY_TIME,
    MIB,
    Because,
    DriftFinding,
    Ranked,
    RememberedDrift,
    RememberedRanking,
)
from app.services.served_model import ServedModel
from app.services.user_history import History, load_history
from app.store import drift_records, repository

PROFILE_EVENTS = 5_000  # the profile reads at most this many recent events
TOP_ITEMS = 10
EXPLAINED_BY = 2  # history items named per recommended item
_DEFAULTS = Settings.model_construct()  # the documented defaults (no environment read)


class NotServed(LookupError):
    """The item is not (yet) in the served model's catalogue."""

    def __init__(self, item_id: str) -> None:
        super().__init__(f"item '{item_id}' is not in the served catalogue (a new item is "
                         "embedded within about a second of its upsert)")
        self.item_id = item_id


class Recommender:
    def __init__(self, model: ServedModel, settings: Settings | None = None,
                 factory: sessionmaker[Session] | None = None, feed: ChangeFeed | None = None,
                 *, inference: Inference | None = None,
                 drift_cache: UserStateCache[RememberedDrift] | None = None,
                 interest_states: InterestStates | None = None,
                 titles: ItemTitles | None = None) -> None:
        self.model = model
        self.settings = settings = settings or _DEFAULTS
        self.factory = factory  # sessions it only reads through (histories, titles)
        self.feed = feed
        self.inference = inference or Inference(model.bundle, model.max_batch,
                                                model.observe_batch)
        # Drift findings per user, for the latest state of their events (last event, count):
        # the detector over a window is the costliest part of a request, and its answer
        # only changes when the user has a new event.
        self.drift_cache = drift_cache or remembered.new_drift_cache(settings)
        # Rankings per user (a few option variants), for the latest state of their events.
        self.ranking_cache = remembered.new_ranking_cache(settings)
        # The drift detector's state per user, carried forward event by event.
        self.interest_states = interest_states or InterestStates(
            model.bundle, settings.interest_state_users, settings.interest_state_mb * MIB,
            max_batch=model.max_batch, replay=self.inference.replay_drift)
        # Titles of the items responses name, while the change feed vouches for them.
        self.titles = titles or ItemTitles(feed, settings.title_cache_size)

    # What a served version is, read through it (metrics, logs, tests): the model's own.
    @property
    def bundle(self) -> InterestModelBundle:
        return self.model.bundle

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def version(self) -> str:
        return self.model.version

    @property
    def device(self) -> str:
        return self.model.device

    @property
    def topk(self) -> TopKIndex | None:
        return self.model.topk

    # ------------------------------------------------------------------ lifecycle
    def with_catalogue(self, bundle: InterestModelBundle, catalogue: Mapping[str, bytes],
                       availability: Availability) -> Recommender:
        """The object serving this version after a catalogue change. Same rows: everything
        survives but remembered rankings when the availability changed (they may hold items
        retired now). New rows: new forward passes, caches and drift states."""
        model = self.model
        if bundle is model.bundle:
            replaced = dataclasses.replace(model, catalogue=catalogue,
                                           availability=availability)
            successor = Recommender(replaced, self.settings, self.factory, self.feed,
                                    inference=self.inference, drift_cache=self.drift_cache,
                                    interest_states=self.interest_states, titles=self.titles)
            if availability == model.availability:
                successor.ranking_cache = self.ranking_cache
            return successor
        replaced = dataclasses.replace(model, bundle=bundle, catalogue=catalogue,
                                       availability=availability)
        return Recommender(replaced, self.settings, self.factory, self.feed, titles=self.titles)

    def forget(self, user_ids: Sequence[str] | None) -> None:
        """Drop the remembered rankings, drift findings and incremental drift states of these
        users (an erasure; None: of every user, when erasures may have been missed)."""
        if user_ids is None:
            self.ranking_cache.clear()
            self.drift_cache.clear()
            self.interest_states.forget(None)
            return
        for user_id in user_ids:
            self.ranking_cache.forget(user_id)
            self.drift_cache.forget(user_id)
            self.interest_states.forget(user_id)

    # ------------------------------------------------------------------ profile
    def profile(self, session: Session, user_id: str) -> InterestProfileOut:
        """Long- and short-term topic weights, trends, time-of-day contexts, top items."""
        settings, bundle = self.settings, self.bundle
        history = load_history(session, user_id, PROFILE_EVENTS)
        topics = self._topics_of(history.item_ids)
        known = topics >= 0
        names = bundle.topics.names
        timestamps = np.asarray(history.timestamps)[known]
        profile = profiles.build_profile(
            topics[known], timestamps, names,
            half_life_days=settings.profile_half_life_days,
            short_window=settings.short_term_events,
        )
        return InterestProfileOut(
            user_id=user_id, model_version=self.version,
            as_of=_as_time(history.timestamps[-1]), event_count=history.total,
            enough_events=bool(known.any()),
            long_term=[TopicWeight(topic=t, weight=w) for t, w in profile.long_term],
            short_term=[TopicWeight(topic=t, weight=w) for t, w in profile.short_term],
            trends=[TopicTrendOut(topic=t.topic, trend=t.label, change=t.change)  # type: ignore[arg-type]
                    for t in profile.trends],
            contexts={name: [TopicWeight(topic=t, weight=w) for t, w in weights]
                      for name, weights in profile.contexts.items()},
            top_items=self._top_items(session, history),
        )

    def _top_items(self, session: Session, history: History) -> list[ProfileItem]:
        """The items that weigh most in the long-term profile: recency-decayed, ratings
        counted."""
        times = np.asarray(history.timestamps)
        decay = profiles.decay_weights(times, float(times[-1]),
                                       self.settings.profile_half_life_days * profiles.DAY_S)
        strength = decay * np.asarray([v if v and v > 0 else 1.0 for v in history.values])
        best: dict[str, float] = {}
        for item_id, weight in zip(history.item_ids, strength, strict=True):
            best[item_id] = max(best.get(item_id, 0.0), float(weight))
        chosen = sorted(best, key=lambda i: (-best[i], i))[:TOP_ITEMS]
        titles = self.titles.of(session, chosen)
        return [ProfileItem(item_id=i, title=titles.get(i), topic=self._topic_name(i))
                for i in chosen]

    def timeline(self, session: Session, user_id: str, limit: int, window: int
                 ) -> InterestTimelineOut:
        return timeline.interest_timeline(session, self.model, user_id=user_id, limit=limit,
                                          window=window)

    def _topics_of(self, item_ids: Sequence[str]) -> np.ndarray:
        topics = [self.bundle.item_topic(item_id) for item_id in item_ids]
        return np.asarray([-1 if t is None else t for t in topics], dtype=np.int64)

    def _topic_name(self, item_id: str) -> str:
        topic = self.bundle.item_topic(item_id)
        return ranking.UNKNOWN_TOPIC if topic is None else self.bundle.topics.topic_name(topic)

    # ------------------------------------------------------------------ drift
    def find_drift(self, history: History, user_id: str | None = None) -> DriftFinding:
        """The detector's trace over the history's window and the calibrated decision rule.

        A user's trace is carried forward from their incremental state (app.services.
        interest_state: only events it has not seen go through the model); without a user id
        the window is replayed. The window is the last events up to `max_events`, its start
        moving in steps of half of that (app.ml.incremental.drift_window_start)."""
        bundle = self.bundle
        trace = self.interest_states.trace(user_id, history.event_ids, history.item_ids,
                                           history.timestamps, history.total)
        probs = trace.probabilities
        change = bundle.decide(trace.events)
        n_topics = len(bundle.topics.names)
        before = after = np.zeros(n_topics)
        position = None
        if change is not None:  # the change as the detector places it (its alarm may be later)
            position = int(trace.positions[change.change_index])
            window = history.item_ids[trace.start:]
            event_topics = [[t] if t >= 0 else [] for t in self._topics_of(window)]
            before, after = drift_domain.interests_around(event_topics,
                                                          position - trace.start, n_topics)
        return DriftFinding(history, probs, change, position, before, after)

    @property
    def history_limit(self) -> int:
        """Events a ranking or a drift state reads: the scorer's window and the detector's."""
        return max(self.bundle.drift.max_events, self.bundle.history_window)

    def advance(self, user_id: str) -> None:
        """Bring the user's incremental drift state up to their latest event (the background
        queue after ingestion), so the next read finds it current. The session is closed
        before the model runs."""
        with self._session() as session:
            history = load_history(session, user_id, self.history_limit)
        self.interest_states.trace(user_id, history.event_ids, history.item_ids,
                                   history.timestamps, history.total)

    def cached_drift(self, user_id: str, history: History) -> DriftFinding:
        """find_drift, remembered per user for the latest state of their events (last event,
        event count) and the served version's decision settings, which an operator may tune
        on a loaded model. A newer state replaces the user's entry."""
        drift = self.bundle.drift
        state = (history.event_ids[-1], history.total, drift.threshold, drift.kind_threshold)
        entry = self.drift_cache.get(user_id, state, None)
        if entry is not None and entry.holds_for(history):
            return entry.finding(history)
        finding = self.find_drift(history, user_id)
        self.drift_cache.put(user_id, state, None, RememberedDrift.of(finding))
        return finding

    def check_drift(self, session: Session, user_id: str, backfill: bool = False) -> DriftOut:
        """The user's drift status; a detected change point is recorded once, every check
        logged. Writes through `session`: the caller commits (one transaction for the whole
        check). `backfill` (the batch scan): the check and a new record are stamped with the
        user's last event time, the earliest moment a live check could have made them."""
        bundle = self.bundle
        history = load_history(session, user_id, bundle.drift.max_events)
        stamp = _as_time(history.timestamps[-1]) if backfill else None
        finding = self.cached_drift(user_id, history)
        names = bundle.topics.names
        change, position, record_id, change_point = finding.change, finding.position, None, None
        if change is not None and position is not None:
            at = _as_time(history.timestamps[position])
            record, _ = drift_records.record_drift(
                session, user_id=user_id, change_event_id=history.event_ids[position],
                change_at=at, change_index=history.offset + position, score=change.score,
                threshold=bundle.drift.threshold, kind=change.kind,
                model_version=self.version, detected_at=stamp,
                interests_before=dict(drift_domain.top_topics(finding.before, names,
                                                              len(names))),
                interests_after=dict(drift_domain.top_topics(finding.after, names, len(names))),
            )
            record_id = record.id
            change_point = ChangePointOut(event_id=history.event_ids[position], timestamp=at,
                                          index=history.offset + position)
        # A live check is logged once per state of the user's events (and model version): a
        # read key repeating GET /drift/{user} does not grow the table. The backfill logs
        # every check.
        if backfill or not drift_records.checked_since_last_event(session, user_id,
                                                                  self.version):
            drift_records.record_check(session, user_id=user_id, model_version=self.version,
                                       drift_detected=change is not None, record_id=record_id,
                                       checked_at=stamp)
        probs = finding.probabilities
        return DriftOut(
            user_id=user_id, model_version=self.version,
            drift_detected=change is not None,
            score=float(change.score if change else self._eligible_max(probs)),
            threshold=float(bundle.drift.threshold),
            kind=change.kind if change else "none",  # type: ignore[arg-type]
            change_point=change_point,
            from_interests=_weights_list(finding.before, names) if change else [],
            to_interests=_weights_list(finding.after, names) if change else [],
            record_id=record_id, event_count=history.total,
            enough_events=len(history.item_ids) >= bundle.drift.min_events,
            min_events=bundle.drift.min_events,
        )

    def _eligible_max(self, probs: np.ndarray) -> float:
        """Highest drift probability among events that may raise an alarm (after
        min_events)."""
        eligible = probs[self.bundle.drift.min_events - 1:]
        return float(eligible.max()) if len(eligible) else 0.0

    def _drift_of(self, history: History, enabled: bool, user_id: str | None = None
                  ) -> DriftFinding | None:
        if not enabled or len(history.item_ids) < self.bundle.drift.min_events:
            return None
        return (self.cached_drift(user_id, history) if user_id
                else self.find_drift(history))

    # ------------------------------------------------------------------ ranking
    def rank_items(self, *, item_ids: Sequence[str], timestamps: Sequence[float], k: int,
                   exclude: set[str], strength: float, finding: DriftFinding | None,
                   explain_window: int = 20, at: float | None = None, candidates: int = 200
                   ) -> tuple[Ranked, bool, Because]:
        """Top-k (item_id, score, topic) for a history, whether drift changed the ranking, and
        per ranked item the (at most two) items of the last `explain_window` events of the
        history most like it in the served model's item table (why it is recommended).

        With a detected change in `finding`, scores tilt toward the post-change interests.
        `at`: the request time (epoch seconds), read by a model whose time bias uses it.
        With a top-k index on the model, only the `candidates` rows it finds (and as many
        more as are excluded) are scored and ranked, not the whole catalogue."""
        bundle, model = self.bundle, self.model
        post_change = (finding.after if finding is not None and finding.change is not None
                       else None)
        item_topics = bundle.topics.item_topics
        # never recommended: retired items, items outside their availability window
        unavailable = model.availability.unavailable(datetime.now(UTC).timestamp())
        excluded = [i - 1 for i in (bundle.index_of(item)
                                    for item in exclude.union(unavailable)) if i is not None]
        if model.topk is None:
            scores = self.inference.score_next(item_ids, timestamps, at)
            result = ranking.rank(scores, item_topics, k, post_change, strength,
                                  exclude=excluded, pad_index=None,
                                  tie_key=self.inference.tie_key())
        else:  # the index's candidates, enough to fill k after every exclusion
            wanted = max(candidates, k) + len(excluded)
            rows, scores = self.inference.score_candidates(model.topk, item_ids, timestamps,
                                                           at, wanted)
            result = ranking.rank_subset(rows, scores, item_topics, k, post_change, strength,
                                         exclude=excluded, tie_key=self.inference.tie_key())
        names = ranking.explain_topics(result.indices, item_topics, bundle.topics.names)
        chosen = [(bundle.item_ids[int(i)], float(s), name)
                  for i, s, name in zip(result.indices, result.scores, names, strict=True)]
        return chosen, result.drift_aware, self._because(result.indices, item_ids,
                                                         explain_window)

    def _because(self, ranked: np.ndarray, history: Sequence[str], window: int) -> Because:
        """The history items most like each ranked item (cosine over the item table)."""
        bundle = self.bundle
        positions = [i - 1 for i in (bundle.index_of(item) for item in history[-window:])
                     if i is not None]
        if not len(ranked) or not positions:
            return [[] for _ in ranked]
        table = self.inference.unit_table("item_table")
        found = similarity.explain(table, [int(i) for i in ranked], positions, EXPLAINED_BY)
        return [[(bundle.item_ids[p], round(sim, 4)) for p, sim in entry] for entry in found]

    def _variant(self, options: RankingOptions) -> tuple[Any, ...]:
        """The cache variant of a ranking: the request's options and the served version's
        settings that change a ranking (tunable on a loaded model)."""
        drift = self.bundle.drift
        # a window opening or closing changes what may be recommended
        closed = _digest(self.model.availability.closed_windows(datetime.now(UTC).timestamp()))
        return (options, self.settings.drift_strength, drift.threshold, drift.kind_threshold,
                closed)

    def _feed_state(self, user_id: str) -> tuple[Any, ...] | None:
        """The user's event state as the change feed vouches for it (None: it cannot)."""
        token = self.feed.token(user_id) if self.feed is not None else None
        return None if token is None else ("feed", *token)

    def _remembered(self, user_id: str, variant: tuple[Any, ...], state: tuple[Any, ...],
                    at: float) -> RememberedRanking | None:
        entry = self.ranking_cache.get(user_id, state, variant)
        if entry is None or entry.state != state or not entry.holds_at(at):
            return None
        return entry

    # ------------------------------------------------------------------ recommendations
    async def recommend(self, user_id: str, options: RankingOptions) -> RecommendationsOut:
        """The user's recommendations: a user whose events have not changed since the last
        answer is served from memory on the event loop (no thread hop, no query); otherwise
        ranked in the thread pool through a session of its own."""
        response = self.remembered(user_id, options)
        if response is not None:
            return response
        return await run_in_threadpool(self._recommend_in_session, user_id, options)

    def _recommend_in_session(self, user_id: str, options: RankingOptions
                              ) -> RecommendationsOut:
        with self._session() as session:
            return self.recommend_for_user(session, user_id, options)

    def _session(self) -> Session:
        if self.factory is None:
            raise RuntimeError("a Recommender without a session factory cannot read the store")
        return self.factory()

    def remembered(self, user_id: str, options: RankingOptions) -> RecommendationsOut | None:
        """The answer for a user whose events have not changed since it was computed (and,
        for a model that reads the request time, whose ranking holds at the options' time),
        from memory alone (no database), when the change feed can vouch for that; else
        None."""
        state = self._feed_state(user_id)
        if state is None:
            return None
        entry = self._remembered(user_id, self._variant(options), state, options.at_time())
        return None if entry is None or entry.response is None else remembered.anew(
            entry.response)

    def recommend_for_user(self, session: Session, user_id: str, options: RankingOptions
                           ) -> RecommendationsOut:
        # A ranking depends only on the user's events and the request's options. Its state is
        # the change feed's token for the user (taken before reading, so a change that lands
        # meanwhile invalidates it) or, without a live feed, one aggregate read of the user's
        # events, which changes with every new event since events are only ever added.
        state = self._feed_state(user_id)
        from_feed = state is not None
        total = None
        if state is None:
            total, last_seq = repository.user_event_state(session, user_id)
            if total == 0:
                raise UnknownUser(user_id)
            state = ("db", total, last_seq)
        variant = self._variant(options)
        at = options.at_time()
        entry = self._remembered(user_id, variant, state, at)
        if entry is not None:
            if entry.response is not None:
                return remembered.anew(entry.response)
            return self._response(session, user_id, entry.chosen, entry.drift_aware,
                                  entry.because)
        chosen, changed, because, valid = self._rank_for_user(session, user_id, total,
                                                              options, at)
        response = self._response(session, user_id, chosen, changed, because)
        self.ranking_cache.put(user_id, state, variant, RememberedRanking(
            state, chosen, changed, response if from_feed else None, because, valid))
        return response

    def _rank_for_user(self, session: Session, user_id: str, total: int | None,
                       options: RankingOptions, at: float
                       ) -> tuple[Ranked, bool, Because, tuple[float, float]]:
        """The ranking at request time `at`, and the request times it holds for."""
        bundle, settings = self.bundle, self.settings
        history = load_history(session, user_id, self.history_limit, total)
        exclude: set[str] = set()
        if options.exclude_seen:  # the window already holds every event when the user has few
            exclude = (set(history.item_ids) if history.offset == 0
                       else repository.user_item_ids(session, user_id))
        finding = self._drift_of(history, options.drift_aware, user_id)
        chosen, changed, because = self.rank_items(
            item_ids=history.item_ids, timestamps=history.timestamps, k=options.k,
            exclude=exclude, strength=settings.drift_strength, finding=finding,
            explain_window=settings.short_term_events, at=at,
            candidates=settings.topk_candidates)
        valid = (bundle.request_time_validity(history.item_ids, history.timestamps, at)
                 if bundle.uses_request_time else ANY_TIME)
        return chosen, changed, because, valid

    async def recommend_items(self, item_ids: Sequence[str], timestamps: Sequence[float] | None,
                              options: RankingOptions, user_id: str | None = None
                              ) -> RecommendationsOut:
        """`recommend_for_items` in the thread pool, through a session of its own (opened
        only if a title must be read)."""
        return await run_in_threadpool(self._items_in_session, item_ids, timestamps, options,
                                       user_id)

    def _items_in_session(self, item_ids: Sequence[str], timestamps: Sequence[float] | None,
                          options: RankingOptions, user_id: str | None) -> RecommendationsOut:
        with self._session() as session:
            return self.recommend_for_items(session, item_ids, timestamps, options, user_id)

    def recommend_for_items(self, session: Session, item_ids: Sequence[str],
                            timestamps: Sequence[float] | None, options: RankingOptions,
                            user_id: str | None = None) -> RecommendationsOut:
        """Recommendations for a history the request gives (item ids, oldest first;
        timestamps: None takes them as one minute apart, ending now)."""
        bundle, settings = self.bundle, self.settings
        unknown = [i for i, item_id in enumerate(item_ids) if bundle.index_of(item_id) is None]
        if unknown:
            raise UnknownItems(unknown, [item_ids[i] for i in unknown])
        now = datetime.now(UTC).timestamp()
        at = now if math.isnan(options.at) else options.at
        if timestamps is None:
            timestamps = [now - 60.0 * (len(item_ids) - 1 - i) for i in range(len(item_ids))]
        exclude = set(item_ids) if options.exclude_seen else set()
        window = History.of_items(list(item_ids), list(timestamps))
        chosen, changed, because = self.rank_items(
            item_ids=item_ids, timestamps=timestamps, k=options.k, exclude=exclude,
            strength=settings.drift_strength,
            finding=self._drift_of(window, options.drift_aware),
            explain_window=settings.short_term_events, at=at,
            candidates=settings.topk_candidates)
        return self._response(session, user_id, chosen, changed, because)

    def _response(self, session: Session, user_id: str | None, chosen: Ranked,
                  drift_aware: bool, because: Because | None = None) -> RecommendationsOut:
        because = because if because is not None else [[] for _ in chosen]
        titles = self.titles.of(session, [
            *(item_id for item_id, _, _ in chosen),
            *(item_id for reasons in because for item_id, _ in reasons)])
        return RecommendationsOut(
            user_id=user_id, model_version=self.version, recommendation_id=uuid.uuid4(),
            drift_aware=drift_aware,
            items=[RecommendedItem(
                item_id=item_id, title=titles.get(item_id), score=score, topic=topic,
                because=[Reason(item_id=reason, title=titles.get(reason), similarity=sim)
                         for reason, sim in reasons])
                for (item_id, score, topic), reasons in zip(chosen, because, strict=True)])

    # ------------------------------------------------------------------ similar items
    def similar(self, session: Session, item_id: str, k: int) -> dict[str, Any]:
        """The `k` items most like this one: by the served item table for an item the model
        trained on, by the text embeddings for one it has not (cold start); retired items and
        items outside their window left out. The only database read is the titles."""
        bundle = self.bundle
        index = bundle.index_of(item_id)
        if index is None or item_id in self.model.availability.deleted:
            raise NotServed(item_id)
        source = "item_table" if bundle.is_trained(item_id) else "text"
        table = self.inference.unit_table(source)
        unavailable = self.model.availability.unavailable(datetime.now(UTC).timestamp())
        excluded = [i - 1 for i in (bundle.index_of(u) for u in unavailable) if i is not None]
        positions, scores = similarity.nearest(table, index - 1, k, excluded,
                                               tie_key=self.inference.tie_key())
        names = ranking.explain_topics(positions, bundle.topics.item_topics,
                                       bundle.topics.names)
        ids = [bundle.item_ids[int(p)] for p in positions]
        titles = self.titles.of(session, ids)
        return {
            "item_id": item_id, "model_version": self.version, "source": source,
            "items": [{"item_id": i, "title": titles.get(i),
                       "similarity": float(s), "topic": name}
                      for i, s, name in zip(ids, scores, names, strict=True)],
        }


def _weights_list(weights: np.ndarray, names: Sequence[str]) -> list[TopicWeight]:
    return [TopicWeight(topic=name, weight=weight)
            for name, weight in drift_domain.top_topics(weights, names, k=len(names))]


def _as_time(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=UTC)


def _digest(ids: tuple[str, ...]) -> bytes:
    """A short fixed-size key for a set of ids (cache keys stay small whatever it holds)."""
    if not ids:
        return b""
    return hashlib.blake2b("\n".join(ids).encode(), digest_size=16).digest()


