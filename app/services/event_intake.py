"""Storing events (`POST /events`) and what follows each commit.

With `event_group_commit` one writer thread per worker commits the batches of concurrent
requests together (`EventWriter`): every batch queued while a transaction runs goes into the
next one, each through the same ingestion as alone, and each is acknowledged only after that
transaction commits. Fewer transactions (one commit, one connection checkout and one flush of
the write-ahead log per group); a batch never waits for more to arrive.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.core.exceptions import BatchRejected
from app.core.metrics import Metrics
from app.schemas.events import EventIn
from app.services import ingestion
from app.services.change_feed import ChangeFeed
from app.services.drift_queue import DriftQueue
from app.store import db

logger = logging.getLogger("driftrec.events")

GROUP_EVENTS = 1_000  # a group takes no more batches once it holds this many events


@dataclass(frozen=True, slots=True)
class EventsOutcome:
    accepted: int
    duplicates: int
    drift_checks_queued: int | None
    conflicts: list[ingestion.Conflict] = field(default_factory=list)


class EventIntake:
    def __init__(self, factory: sessionmaker[Session], settings: Settings, metrics: Metrics,
                 feed: ChangeFeed, drift_queue: DriftQueue,
                 state_queue: DriftQueue | None = None) -> None:
        self._factory = factory
        self._settings = settings
        self._metrics = metrics
        self._feed = feed
        self._drift_queue = drift_queue
        self._state_queue = state_queue
        self.writer = EventWriter(factory, settings) if settings.event_group_commit else None

    def start(self) -> None:
        if self.writer is not None:
            self.writer.start()

    def stop(self) -> None:
        if self.writer is not None:
            self.writer.stop()

    def ingest(self, events: Sequence[EventIn], detect_drift: bool) -> EventsOutcome:
        """Store a batch of events (atomic, idempotent), then run the post-commit effects."""
        with db.transaction(self._factory) as session:
            result = ingestion.ingest_events(session, events, self._settings)
        return self.after_ingested(result, detect_drift)

    async def submit(self, events: Sequence[EventIn], detect_drift: bool) -> EventsOutcome:
        """`ingest` for a request: through the group writer when there is one (the request
        waits on the event loop, no thread of its own), else in the thread pool."""
        if self.writer is None:
            return await run_in_threadpool(self.ingest, events, detect_drift)
        result = await asyncio.wrap_future(self.writer.submit(events))
        return self.after_ingested(result, detect_drift)

    def after_ingested(self, result: ingestion.EventIngestResult, detect_drift: bool = False
                       ) -> EventsOutcome:
        self._metrics.count_events(result.accepted, result.duplicates)
        # before the acknowledgement: this process never answers from a ranking it knows is
        # stale (other processes: the NOTIFY sent with the commit)
        self._feed.users_changed(result.user_ids)
        queued = self._drift_queue.submit(result.user_ids) if detect_drift else None
        if self._state_queue is not None and not detect_drift and result.accepted:
            self._state_queue.submit(result.user_ids)  # a drift check brings it forward too
        return EventsOutcome(result.accepted, result.duplicates, queued, result.conflicts)


@dataclass(frozen=True, slots=True)
class _Batch:
    events: Sequence[EventIn]
    done: Future[ingestion.EventIngestResult]


class EventWriter:
    """One thread that commits the event batches queued meanwhile in one transaction.

    Each batch goes through `ingestion.ingest_events` as it would alone (its own validation,
    users and duplicates; batches later in a group see the earlier ones' events, as they
    would after their commit). A batch the validation rejects wrote nothing: it fails alone
    and the group goes on. Any other failure rolls the group back; while the database answers
    (a deadlock, one batch's fault) its batches are then written one transaction each, so no
    batch fails for another's, and when it does not (an outage) they all fail at once. A
    batch's future completes only after its transaction commits."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings) -> None:
        self._factory = factory
        self._settings = settings
        self._queue: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="event-writer", daemon=True)
        self._lock = threading.Lock()
        self._stopped = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued, then end the thread (later batches are refused)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join()

    def submit(self, events: Sequence[EventIn]) -> Future[ingestion.EventIngestResult]:
        batch = _Batch(events, Future())
        with self._lock:
            if self._stopped:
                raise RuntimeError("the event writer has stopped: the service is shutting down")
            self._queue.put(batch)
        return batch.done

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            group, size = [first], len(first.events)
            while size < GROUP_EVENTS:
                try:
                    queued = self._queue.get_nowait()
                except queue.Empty:
                    break
                if queued is None:
                    stopping = True
                    break
                group.append(queued)
                size += len(queued.events)
            # a request that went away before its batch was taken is not written
            self._write([b for b in group if b.done.set_running_or_notify_cancel()])

    def _write(self, group: list[_Batch]) -> None:
        if not group:
            return
        outcomes: list[ingestion.EventIngestResult | BatchRejected] = []
        try:
            with db.transaction(self._factory) as session:
                for batch in group:
                    try:
                        outcomes.append(ingestion.ingest_events(session, batch.events,
                                                                self._settings))
                    except BatchRejected as rejected:
                        outcomes.append(rejected)
        except Exception as error:  # handed to the requests, never lost
            if len(group) == 1 or not db.reachable(self._factory):
                # alone, or the database is away: each fails as it would have alone (an
                # outage is answered at once, not after a retry per batch)
                for batch in group:
                    batch.done.set_exception(error)
                return
            logger.info("a group of %d event batches failed (%s); writing them one by one",
                        len(group), type(error).__name__)
            for batch in group:
                self._write([batch])
            return
        for batch, outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, BatchRejected):
                batch.done.set_exception(outcome)
            else:
                batch.done.set_result(outcome)
