"""Storing events (`POST /events`) and what follows each commit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.core.metrics import Metrics
from app.schemas.events import EventIn
from app.services import ingestion
from app.services.change_feed import ChangeFeed
from app.services.drift_queue import DriftQueue
from app.store.db import transaction


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

    def ingest(self, events: Sequence[EventIn], detect_drift: bool) -> EventsOutcome:
        """Store a batch of events (atomic, idempotent), then run the post-commit effects."""
        with transaction(self._factory) as session:
            result = ingestion.ingest_events(session, events, self._settings)
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
