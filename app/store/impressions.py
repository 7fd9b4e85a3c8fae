"""Impressions: written in batches, erased with their user, read back with what followed.

An impression row belongs to a user the store holds: a batch writes only the impressions of
users that exist and existed when the impression was made, so an impression still queued in
some worker when its user was erased is never written afterwards (not even when the user
comes back with new events: the new user row is younger than the impression). On PostgreSQL
the batch holds its users' rows with a KEY SHARE lock until it commits, so an erasure (which
takes the row FOR UPDATE) waits for the batch and then deletes what it wrote; on SQLite the
batch takes the write lock before it reads the users.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, select, true
from sqlalchemy.orm import Session

from app.store.models import Event, Impression, User
from app.store.repository import _chunks, _insert, write_lock


@dataclass(frozen=True, slots=True)
class ImpressionRow:
    recommendation_id: str
    user_id: str
    model_version: str
    items: list[str]  # in rank order: the position of an item is its index
    k: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    written: int
    unknown_user: int  # of users gone (erased) or re-created since the impression was made


def write_impressions(session: Session, rows: Sequence[ImpressionRow]) -> WriteOutcome:
    """Insert a batch of impressions (see the module docstring for which are kept). A
    recommendation id already stored is skipped (a retried batch writes nothing twice). The
    caller commits."""
    if not rows:
        return WriteOutcome(0, 0)
    postgres = session.get_bind().dialect.name == "postgresql"
    write_lock(session)  # SQLite: hold the write lock before reading the users
    created: dict[str, datetime] = {}
    for chunk in _chunks(sorted({row.user_id for row in rows})):
        query = (select(User.user_id, User.created_at).where(User.user_id.in_(chunk))
                 .order_by(User.user_id))
        if postgres:
            query = query.with_for_update(key_share=True)
        created.update((user_id, at) for user_id, at in session.execute(query))
    kept = [row for row in rows
            if row.user_id in created and created[row.user_id] <= row.created_at]
    written = 0
    if kept:
        statement = (_insert(session, Impression)
                     .on_conflict_do_nothing(index_elements=[Impression.recommendation_id])
                     .returning(Impression.recommendation_id))
        written = len(list(session.scalars(statement, [
            {"recommendation_id": row.recommendation_id, "user_id": row.user_id,
             "model_version": row.model_version, "items": list(row.items), "k": row.k,
             "created_at": row.created_at} for row in kept])))
    return WriteOutcome(written, len(rows) - len(kept))


def delete_user_impressions(session: Session, user_id: str) -> int:
    """Delete the user's impressions (part of an erasure); how many there were."""
    result = session.execute(delete(Impression).where(Impression.user_id == user_id))
    return int(result.rowcount or 0)


def count_impressions(session: Session, user_id: str | None = None) -> int:
    query = select(func.count()).select_from(Impression)
    if user_id is not None:
        query = query.where(Impression.user_id == user_id)
    return int(session.scalar(query) or 0)


# (impression id, model version, items, k, created_at, next event's item id, its time): one
# row per counted next event of each impression (at most `window`), or one row with the two
# event columns None when no event followed; ordered by impression, then event order.
FollowupRow = tuple[int, str, list[str], int, datetime, str | None, datetime | None]


def impressions_with_followups(session: Session, *, since: datetime | None,
                               until: datetime | None, horizon: datetime, window: int,
                               chunk: int = 2_000) -> Iterator[FollowupRow]:
    """Impressions made in [since, until) and each one's first `window` events after it (by
    event time, then ingestion order) up to `horizon` (an upper bound on every impression's
    time window: the exact window per impression is applied by the caller). Streamed."""
    in_range = []
    if since is not None:
        in_range.append(Impression.created_at >= since)
    if until is not None:
        in_range.append(Impression.created_at < until)
    if session.get_bind().dialect.name == "postgresql":
        query = _followups_lateral(in_range, horizon, window)
    else:
        query = _followups_windowed(in_range, horizon, window)
    result = session.execute(query, execution_options={"yield_per": chunk})
    for row in result:
        yield (int(row[0]), str(row[1]), list(row[2] or []), int(row[3]), row[4], row[5],
               row[6])


def _impression_columns() -> tuple[Any, ...]:
    return (Impression.id, Impression.model_version, Impression.items, Impression.k,
            Impression.created_at)


def _followups_lateral(in_range: list[Any], horizon: datetime, window: int) -> Any:
    """PostgreSQL: a LATERAL subquery per impression reads its next `window` events through
    the (user_id, occurred_at, seq) index."""
    follow = (select(Event.item_id, Event.occurred_at, Event.seq)
              .where(Event.user_id == Impression.user_id,
                     Event.occurred_at > Impression.created_at, Event.occurred_at <= horizon)
              .order_by(Event.occurred_at, Event.seq).limit(window)
              .lateral("follow"))
    return (select(*_impression_columns(), follow.c.item_id, follow.c.occurred_at)
            .select_from(Impression).outerjoin(follow, true())
            .where(*in_range)
            .order_by(Impression.id, follow.c.occurred_at, follow.c.seq))


def _followups_windowed(in_range: list[Any], horizon: datetime, window: int) -> Any:
    """SQLite (no LATERAL): every event of the user after the impression up to the horizon,
    numbered per impression, the first `window` kept."""
    numbered = (select(Impression.id.label("impression_id"), Event.item_id, Event.occurred_at,
                       func.row_number().over(partition_by=Impression.id,
                                              order_by=(Event.occurred_at, Event.seq))
                       .label("n"))
                .join(Event, and_(Event.user_id == Impression.user_id,
                                  Event.occurred_at > Impression.created_at,
                                  Event.occurred_at <= horizon))
                .where(*in_range)
                .subquery("follow"))
    return (select(*_impression_columns(), numbered.c.item_id, numbered.c.occurred_at)
            .select_from(Impression)
            .outerjoin(numbered, and_(numbered.c.impression_id == Impression.id,
                                      numbered.c.n <= window))
            .where(*in_range)
            .order_by(Impression.id, numbered.c.n))
