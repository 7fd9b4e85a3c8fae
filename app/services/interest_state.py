"""Per-user incremental interest state: the drift detector's state, carried forward per worker.

Every drift finding (``GET /drift``, ``/recommend`` with drift on, the background checks) needs
the detector's trace over the user's window of events (:func:`app.ml.incremental.
drift_window_start`: the whole history up to ``max_events``, then a start that moves forward in
steps of ``max_events // 2``). Replaying that window costs a Transformer pass per 25 events, the
features and a GRU over up to 200 events. Instead each worker keeps, per user, the detector's
state after the window's events and brings it up to date with only the events it has not
seen, one step each. The state and its stepping are the detector's incremental engine
(:func:`app.ml.incremental.engine_for`: feature-gru's :class:`app.ml.incremental.DriftState`,
bocpd's run-length posterior, or a detector's own ``incremental_engine``); a detector without
one is replayed on every use.

What is kept per user (`UserInterestState`): the window's first event and the number of the
user's events it covers, a 64-bit fingerprint of each of those events' ids (in history order),
where the known ones sit in the window, and the engine's state (for feature-gru: the known
events' model indices, times, the trace so far, the last scorer hidden states and the GRU
state, about 7 KiB at 200 events; for bocpd about 75 KiB at max_run 200). Bounded by
`DRIFTREC_INTEREST_STATE_USERS` and `_MB` (least recently used go first).

A state answers only for the history it was built from. Each use compares it with the history
just read: the same window start, no more events than the history has, and the same event ids
at the same positions (so an event stored out of time order, which lands before the last one,
or an erased event shows as a different id at some position). Then only the events after it
are added; otherwise (and when the user has none, after a restart or an eviction, or when the
window start moved) it is rebuilt from the history by one replay. The store belongs to one
served model object: a new version or catalogue swap starts with an empty one.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.ml.bundle import InterestModelBundle
from app.ml.incremental import drift_window_start, engine_for
from app.ml.parts import EngineState, EventTrace
from app.services.batching import MicroBatcher

DEFAULT_MAX_USERS = 20_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
USER_OVERHEAD_BYTES = 700  # the LRU node, the entry object, the key
REBUILD_AFTER = 16  # more new events than this: replay the window instead of stepping


@dataclass(frozen=True, slots=True)
class UserInterestState:
    start: int  # first event of the window, counted in the user's whole history
    total: int  # the user's events it covers: the window is events start..total-1
    fingerprints: np.ndarray  # int64[total - start]: hash of each window event's id
    positions: np.ndarray  # int32[n]: where in the window each known (scored) event is
    drift: EngineState  # the detector's engine's state (app.ml.parts.IncrementalEngine)

    @property
    def nbytes(self) -> int:
        return (USER_OVERHEAD_BYTES + self.fingerprints.nbytes + self.positions.nbytes + 224
                + self.drift.nbytes)


@dataclass(frozen=True, slots=True)
class WindowTrace:
    """The detector's trace over a history's window, and where its events are."""

    start: int  # index in the history's event lists (History.item_ids) of the window's first
    positions: np.ndarray  # int[n]: history index of each traced event
    events: EventTrace  # the trace over the traced events (what the decision rule reads)
    rebuilt: bool = False  # whether this call replayed the window (for tests and metrics)

    @property
    def probabilities(self) -> np.ndarray:
        return self.events.probabilities

    @property
    def surprise(self) -> np.ndarray:
        return self.events.surprise


def _fingerprints(event_ids: Sequence[str]) -> np.ndarray:
    return np.fromiter((hash(e) for e in event_ids), dtype=np.int64, count=len(event_ids))


# A unit of work for the batched engine: ("start", indices, times) or ("extend", state,
# indices, times).
_Work = tuple[Any, ...]


class InterestStates:
    """The incremental drift states of one served model object, per user (thread-safe)."""

    def __init__(self, bundle: InterestModelBundle, max_users: int = DEFAULT_MAX_USERS,
                 max_bytes: int = DEFAULT_MAX_BYTES, max_batch: int = 64,
                 replay: Callable[[list[str], list[float]], EventTrace] | None = None
                 ) -> None:
        self.bundle = bundle
        # a whole window through the detector (default: the bundle, unbatched)
        self._replay = replay or (lambda items, times: bundle.drift_event_traces([items],
                                                                                 [times])[0])
        self.max_users = max_users
        self.max_bytes = max_bytes
        # The detector's incremental engine (feature-gru's, bocpd's own, ...); a detector
        # without one is replayed for every new event.
        self._engine = (engine_for(bundle.sequence_model, bundle.drift_detector)
                        if max_users > 0 and max_bytes > 0 else None)
        self.enabled = self._engine is not None
        self._data: OrderedDict[str, UserInterestState] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        self.rebuilds = 0  # replays (missing, stale or moved-window states)
        self.extensions = 0  # states brought forward by new events only
        self.evictions = 0
        # concurrent requests share one batched pass, as the replay's batcher does
        self._batcher: MicroBatcher[_Work, EngineState] = MicroBatcher(self._run, max_batch)

    def __len__(self) -> int:
        return len(self._data)

    # ------------------------------------------------------------------ engine
    def _run(self, work: Sequence[_Work]) -> list[EngineState]:
        assert self._engine is not None
        results: list[EngineState | None] = [None] * len(work)
        starts = [n for n, w in enumerate(work) if w[0] == "start"]
        extends = [n for n, w in enumerate(work) if w[0] == "extend"]
        if starts:
            built = self._engine.start([(work[n][1], work[n][2]) for n in starts])
            for n, state in zip(starts, built, strict=True):
                results[n] = state
        if extends:
            grown = self._engine.extend([(work[n][1], work[n][2], work[n][3])
                                         for n in extends])
            for n, state in zip(extends, grown, strict=True):
                results[n] = state
        return [state for state in results if state is not None]

    # ------------------------------------------------------------------ memory
    def get(self, user_id: str) -> UserInterestState | None:
        with self._lock:
            entry = self._data.get(user_id)
            if entry is not None:
                self._data.move_to_end(user_id)
            return entry

    def put(self, user_id: str, entry: UserInterestState) -> None:
        with self._lock:
            old = self._data.pop(user_id, None)
            if old is not None:
                self.nbytes -= old.nbytes
            self._data[user_id] = entry
            self.nbytes += entry.nbytes
            while self._data and (len(self._data) > self.max_users
                                  or self.nbytes > self.max_bytes):
                _, evicted = self._data.popitem(last=False)
                self.nbytes -= evicted.nbytes
                self.evictions += 1

    def forget(self, user_id: str | None = None) -> None:
        """Drop one user's state (None: everyone's); the next use rebuilds it."""
        with self._lock:
            if user_id is None:
                self._data.clear()
                self.nbytes = 0
                return
            old = self._data.pop(user_id, None)
            if old is not None:
                self.nbytes -= old.nbytes

    # ------------------------------------------------------------------ traces
    def trace(self, user_id: str | None, event_ids: Sequence[str], item_ids: Sequence[str],
              timestamps: Sequence[float], total: int) -> WindowTrace:
        """The detector's trace over the window of a user's latest events.

        `event_ids`, `item_ids`, `timestamps`: the user's last events, oldest first (ties in
        ingestion order), of `total` in all; they must reach back to the window's start (at
        least `max_events` of them, or all). Without a user id (or with the state off) the
        window is replayed."""
        bundle = self.bundle
        offset = total - len(item_ids)
        start = max(drift_window_start(total, bundle.drift.max_events), offset)
        first = start - offset
        window_items = item_ids[first:]
        index = [bundle.index_of(item) for item in window_items]
        positions = np.asarray([k for k, i in enumerate(index) if i is not None], np.int32)
        if not self.enabled or user_id is None:
            known = [window_items[k] for k in positions]
            times = [timestamps[first + k] for k in positions]
            return WindowTrace(first, positions + first, self._replay(known, times),
                               rebuilt=True)
        fingerprints = _fingerprints(event_ids[first:])
        entry = self.get(user_id)
        covered = 0 if entry is None else entry.total - start
        usable = (entry is not None and entry.start == start and 0 < covered
                  <= len(fingerprints)
                  and np.array_equal(entry.fingerprints, fingerprints[:covered]))
        known_index = np.asarray([index[k] for k in positions], np.int64)
        times = np.asarray([timestamps[first + k] for k in positions], np.float64)
        rebuilt = False
        if usable and len(positions) - entry.drift.n > REBUILD_AFTER:  # type: ignore[union-attr]
            usable = False  # many new events at once (an import): one replay is cheaper
        if usable:
            assert entry is not None
            old = entry.drift.n
            if len(positions) == old:
                drift = entry.drift
            else:
                drift = self._batcher.submit(("extend", entry.drift, known_index[old:],
                                              times[old:]))
                self.extensions += 1
        else:
            drift = self._batcher.submit(("start", known_index, times))
            self.rebuilds += 1
            rebuilt = True
        if entry is None or drift is not entry.drift or entry.total != total:
            self.put(user_id, UserInterestState(start, total, fingerprints, positions, drift))
        return WindowTrace(first, positions + first, drift.trace(), rebuilt=rebuilt)
