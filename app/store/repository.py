"""All SQL of the service: small functions over a Session, the same on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, delete, func, or_, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.store.changes import CHANNEL, change_payloads
from app.store.models import Event, Item, User, utcnow

# SQLite caps the number of bound parameters per statement; chunk long IN lists.
_IN_CHUNK = 900


def _insert(session: Session, model: type[Any]) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(model)


def _chunks(values: Sequence[str], size: int = _IN_CHUNK) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def upsert_items(session: Session, rows: Sequence[dict[str, Any]]) -> int:
    """Insert items or update them in place (by item_id). Returns the number of rows written."""
    if not rows:
        return 0
    now = utcnow()
    values = [{**row, "created_at": now, "updated_at": now} for row in rows]
    statement = _insert(session, Item)
    statement = statement.on_conflict_do_update(
        index_elements=[Item.item_id],
        set_={
            "title": statement.excluded.title,
            "text": statement.excluded.text,
            "categories": statement.excluded.categories,
            "attributes": statement.excluded.attributes,
            "updated_at": statement.excluded.updated_at,
        },
    )
    session.execute(statement, values)
    return len(values)


def get_item(session: Session, item_id: str) -> Item | None:
    return session.get(Item, item_id)


def existing_item_ids(session: Session, item_ids: Iterable[str]) -> set[str]:
    wanted = sorted(set(item_ids))
    found: set[str] = set()
    for chunk in _chunks(wanted):
        found.update(session.scalars(select(Item.item_id).where(Item.item_id.in_(chunk))))
    return found


def ensure_users(session: Session, user_ids: Iterable[str]) -> set[str]:
    """Create the users not stored yet; returns those this call created."""
    # Sorted so concurrent batches lock users in the same order (no deadlocks).
    values = [{"user_id": user_id, "created_at": utcnow()} for user_id in sorted(set(user_ids))]
    if not values:
        return set()
    statement = _insert(session, User).on_conflict_do_nothing().returning(User.user_id)
    return set(session.scalars(statement, values))


def drop_users_without_events(session: Session, user_ids: Iterable[str]) -> None:
    """Delete these users where they have no event (rows this transaction created for a batch
    whose rows for them all turned out to be duplicates: a user exists only with events)."""
    wanted = sorted(set(user_ids))
    for chunk in _chunks(wanted):
        session.execute(delete(User).where(
            User.user_id.in_(chunk),
            ~select(Event.event_id).where(Event.user_id == User.user_id).exists()))


def stored_events(session: Session, event_ids: Iterable[str]) -> dict[str, Event]:
    wanted = sorted(set(event_ids))
    found: dict[str, Event] = {}
    for chunk in _chunks(wanted):
        found.update((e.event_id, e) for e in session.scalars(
            select(Event).where(Event.event_id.in_(chunk))))
    return found


# PostgreSQL: one statement whose parameters are column arrays. The generic multi-row VALUES
# path spends most of its time formatting and parsing the huge statement client-side.
_PG_INSERT_EVENTS = text("""
    INSERT INTO events (event_id, user_id, item_id, type, value, text, occurred_at, context,
                        ingested_at)
    SELECT event_id, user_id, item_id, type, value, text, occurred_at, context, ingested_at
    FROM unnest(
        CAST(:event_id AS varchar[]), CAST(:user_id AS varchar[]), CAST(:item_id AS varchar[]),
        CAST(:type AS varchar[]), CAST(:value AS float8[]), CAST(:text AS text[]),
        CAST(:occurred_at AS timestamptz[]), CAST(:context AS json[]),
        CAST(:ingested_at AS timestamptz[])
    ) WITH ORDINALITY AS batch(event_id, user_id, item_id, type, value, text, occurred_at,
                               context, ingested_at, position)
    ORDER BY position  -- seq follows the batch order: it breaks ties between equal timestamps
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id
""")
_EVENT_COLUMNS = ("event_id", "user_id", "item_id", "type", "value", "text", "occurred_at",
                  "context", "ingested_at")


def insert_events(session: Session, rows: Sequence[dict[str, Any]]) -> set[str]:
    """Insert events, skipping event_ids already stored. Returns the event_ids inserted."""
    if not rows:
        return set()
    if session.get_bind().dialect.name == "postgresql":
        columns = {name: [row[name] for row in rows] for name in _EVENT_COLUMNS}
        columns["context"] = [json.dumps(value) for value in columns["context"]]
        return set(session.scalars(_PG_INSERT_EVENTS, columns))
    statement = (
        _insert(session, Event)
        .on_conflict_do_nothing(index_elements=[Event.event_id])
        .returning(Event.event_id)
    )
    return set(session.scalars(statement, list(rows)))


def announce_changes(session: Session, user_ids: Iterable[str] | None) -> None:
    """Tell every serving process, when this transaction commits, that these users have new
    events (None: the catalogue changed). PostgreSQL NOTIFY; SQLite has none (serving there
    checks each user's event state instead)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for payload in change_payloads(user_ids):
        session.execute(text("SELECT pg_notify(:channel, :payload)"),
                        {"channel": CHANNEL, "payload": payload})


def user_has_events(session: Session, user_id: str) -> bool:
    """Whether the user has a stored event: what every endpoint naming a user asks (a user
    row alone, e.g. one left by an earlier release for an all-duplicate batch, is not one)."""
    return session.scalar(select(Event.event_id).where(Event.user_id == user_id).limit(1)
                          ) is not None


def user_events_page(
    session: Session,
    user_id: str,
    limit: int,
    before: datetime | None = None,
    after_key: tuple[datetime, int] | None = None,
) -> list[Event]:
    """A user's events, newest first: strictly before `before` and/or the (time, seq) key."""
    query: Select[tuple[Event]] = select(Event).where(Event.user_id == user_id)
    if before is not None:
        query = query.where(Event.occurred_at < before)
    if after_key is not None:
        at, seq = after_key
        query = query.where(or_(Event.occurred_at < at,
                                and_(Event.occurred_at == at, Event.seq < seq)))
    query = query.order_by(Event.occurred_at.desc(), Event.seq.desc()).limit(limit)
    return list(session.scalars(query))


def count_rows(session: Session, model: type[Any]) -> int:
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


def user_history_rows(session: Session, user_id: str, limit: int
                      ) -> list[tuple[str, str, datetime, float | None]]:
    """(event_id, item_id, occurred_at, value) of the user's last `limit` events, oldest first.

    Plain rows, not ORM objects: this runs on every model request.
    """
    query = (select(Event.event_id, Event.item_id, Event.occurred_at, Event.value)
             .where(Event.user_id == user_id)
             .order_by(Event.occurred_at.desc(), Event.seq.desc()).limit(limit))
    return [tuple(row) for row in reversed(session.execute(query).all())]  # type: ignore[misc]


def all_items(session: Session) -> list[Item]:
    """The whole catalogue, by item_id (serving embeds it once per loaded model)."""
    return list(session.scalars(select(Item).order_by(Item.item_id)))


def items_by_id(session: Session, item_ids: Iterable[str]) -> dict[str, Item]:
    wanted = sorted(set(item_ids))
    found: dict[str, Item] = {}
    for chunk in _chunks(wanted):
        found.update((i.item_id, i) for i in session.scalars(select(Item).where(
            Item.item_id.in_(chunk))))
    return found


def count_user_events(session: Session, user_id: str) -> int:
    return int(session.scalar(select(func.count()).where(Event.user_id == user_id)) or 0)


def user_event_state(session: Session, user_id: str) -> tuple[int, int | None]:
    """(event count, highest seq) of a user: one index-only read that changes whenever an
    event of the user is stored (events are only ever added), so it can key caches."""
    count, last_seq = session.execute(
        select(func.count(), func.max(Event.seq)).where(Event.user_id == user_id)).one()
    return int(count), last_seq


def user_item_ids(session: Session, user_id: str) -> set[str]:
    """Every item the user has an event on (for excluding seen items)."""
    return set(session.scalars(select(Event.item_id).where(Event.user_id == user_id).distinct()))
