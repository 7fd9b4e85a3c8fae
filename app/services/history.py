"""Reads of what the store holds for dashboards and clients: a user's event pages, recorded
drifts and their aggregates, single items. The routers call these; the SQL stays in the store."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy.orm import Session

from app.core.exceptions import UnknownUser
from app.store import cursors, drift_records, repository
from app.store.models import Event, Item

Bucket = Literal["hour", "day", "week"]


@dataclass(frozen=True, slots=True)
class EventsPage:
    events: list[Event]  # newest first
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class DriftHistoryPage:
    records: list[dict[str, Any]]  # newest first
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class DriftSummary:
    buckets: list[dict[str, Any]]
    transitions: list[dict[str, Any]]


def user_events_page(session: Session, *, user_id: str, limit: int,
                     before: datetime | None = None, cursor: str | None = None) -> EventsPage:
    """One page of the user's events, newest first (a bad cursor: InvalidCursor, a 422)."""
    after_key = cursors.decode(cursors.EVENTS, cursor) if cursor else None
    if not repository.user_has_events(session, user_id):
        raise UnknownUser(user_id)  # the 404 of every endpoint naming a user without events
    events = repository.user_events_page(session, user_id, limit + 1, before=before,
                                         after_key=after_key)
    page, more = events[:limit], len(events) > limit
    next_cursor = (cursors.encode(cursors.EVENTS, page[-1].occurred_at, page[-1].seq)
                   if more else None)
    return EventsPage(page, next_cursor)


def drift_history(session: Session, *, user_id: str | None, since: datetime | None,
                  until: datetime | None, kind: str | None, limit: int,
                  cursor: str | None) -> DriftHistoryPage:
    """Recorded drifts, newest first (a bad cursor: InvalidCursor, a 422)."""
    records, next_cursor = drift_records.drift_history(
        session, user_id=user_id, since=since, until=until, kind=kind, limit=limit,
        cursor=cursor)
    return DriftHistoryPage(records, next_cursor)


def drift_summary(session: Session, *, since: datetime | None, until: datetime | None,
                  bucket: Bucket, transitions: int) -> DriftSummary:
    """Per bucket users checked, drifts and drift rate; the top topic transitions."""
    return DriftSummary(drift_records.drift_summary(session, since, until, bucket),
                        drift_records.top_transitions(session, since, until, transitions))


def get_item(session: Session, *, item_id: str) -> Item | None:
    return repository.get_item(session, item_id)
