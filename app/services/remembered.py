"""What a served version remembers per user: drift findings and rankings, with their sizes.

Both are kept in `app.services.caches.UserStateCache`s owned by the served-version object
(`app.services.recommender.Recommender`), keyed by the state of the user's events, so an
entry is never read for events it was not computed from.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.core.config import Settings
from app.domain import drift as drift_domain
from app.schemas.serving import RecommendationsOut
from app.services.caches import UserStateCache, str_bytes
from app.services.user_history import History

MIB = 1024 * 1024
Because = list[list[tuple[str, float]]]  # per ranked item: (history item, similarity)
Ranked = list[tuple[str, float, str]]  # (item id, score, topic name), best first
ANY_TIME = (-math.inf, math.inf)  # a ranking that does not depend on the request time


@dataclass(frozen=True, slots=True)
class DriftFinding:
    history: History
    probabilities: np.ndarray  # per encoded event (the model skips items it does not know)
    change: drift_domain.ChangePoint | None  # its index counts encoded events only
    position: int | None  # the change event's position in `history` (all events)
    before: np.ndarray
    after: np.ndarray


@dataclass(frozen=True, slots=True)
class RememberedDrift:
    """What the drift cache keeps of a finding: not the history (the caller has it)."""

    probabilities: np.ndarray
    change: drift_domain.ChangePoint | None
    # the change event counted from the newest event (1 = the last one): callers read
    # histories of different lengths ending at the same event
    from_end: int | None
    before: np.ndarray
    after: np.ndarray

    @classmethod
    def of(cls, finding: DriftFinding) -> RememberedDrift:
        n = len(finding.history.item_ids)
        from_end = None if finding.position is None else n - finding.position
        return cls(finding.probabilities, finding.change, from_end, finding.before,
                   finding.after)

    def holds_for(self, history: History) -> bool:
        """Whether the history read reaches back to the remembered change event."""
        return self.from_end is None or self.from_end <= len(history.item_ids)

    def finding(self, history: History) -> DriftFinding:
        n = len(history.item_ids)
        position = None if self.from_end is None else n - self.from_end
        return DriftFinding(history, self.probabilities, self.change, position, self.before,
                            self.after)


def drift_size(entry: RememberedDrift) -> int:
    """Estimated bytes of a drift cache entry (measured in tests/test_memory_bounds.py)."""
    arrays = (entry.probabilities, entry.before, entry.after)
    return 600 + sum(a.nbytes + 112 for a in arrays) + (0 if entry.change is None else 400)


@dataclass(frozen=True, slots=True)
class RememberedRanking:
    """A user's ranking and the state of their events it was computed from. `response` (with
    titles) is kept only when the state came from the change feed, which also tracks the
    catalogue; otherwise titles are read again on use. `valid`: the request times [start,
    end) it holds for (a model whose time bias reads the request time ranks differently once
    the gap from the request to one of the events changes bucket)."""

    state: tuple[Any, ...]
    chosen: Ranked
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


def new_ranking_cache(settings: Settings) -> UserStateCache[RememberedRanking]:
    return UserStateCache(settings.ranking_cache_size, settings.ranking_cache_mb * MIB,
                          settings.ranking_cache_variants, ranking_size)


def new_drift_cache(settings: Settings) -> UserStateCache[RememberedDrift]:
    return UserStateCache(settings.drift_cache_size, settings.drift_cache_mb * MIB, 1,
                          drift_size)


def anew(response: RecommendationsOut) -> RecommendationsOut:
    """A remembered answer as a new response: the same ranking under a recommendation id of
    its own (every response is an impression of its own)."""
    return response.model_copy(update={"recommendation_id": uuid.uuid4()})
