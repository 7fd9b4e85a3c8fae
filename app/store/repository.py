"""All SQL of the service: small functions over a Session, the same on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    ColumnElement,
    Delete,
    Insert,
    Select,
    String,
    Table,
    Text,
    TextClause,
    TypeDecorator,
    and_,
    any_,
    bindparam,
    delete,
    func,
    literal_column,
    or_,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.store.changes import CHANNEL, change_payloads, item_change_payloads
from app.store.models import EVENTS, Event, Item, User, utcnow, written_columns

# Core tables: the statements run on every event and every recommendation are plain Core
# (no ORM compile step per execution), built once per dialect.
ITEMS: Table = Item.__table__  # type: ignore[assignment]
USERS: Table = User.__table__  # type: ignore[assignment]

# SQLite caps the number of bound parameters per statement; chunk long IN lists.
_IN_CHUNK = 900


def _insert(session: Session, model: type[Any]) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(model)


def _chunks(values: Sequence[str], size: int = _IN_CHUNK) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _one_of(column: ColumnElement[str], dialect: str) -> ColumnElement[bool]:
    """`column` is one of the ids bound as `:ids` (see `_ids`): a PostgreSQL array (= ANY), a
    JSON array on SQLite (json_each). One statement text whatever the number of ids, so it
    is compiled once and PostgreSQL plans it once, and no parameter limit to chunk for."""
    if dialect == "postgresql":
        return column == any_(bindparam("ids", type_=postgresql.ARRAY(String)))
    values = select(literal_column("value")).select_from(
        func.json_each(bindparam("ids", type_=String)))
    return column.in_(values.scalar_subquery())


def _ids(session: Session, values: Iterable[str]) -> dict[str, Any]:
    """The `:ids` parameter of a `_one_of` statement: the distinct ids, sorted."""
    ids = sorted(set(values))
    return {"ids": ids if _dialect(session) == "postgresql" else json.dumps(ids)}


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


def existing_item_ids(session: Session, item_ids: Iterable[str], lock: bool = False
                      ) -> set[str]:
    """The ids of these items the store holds. `lock`: on PostgreSQL hold them with a KEY
    SHARE lock until the transaction ends (what the events' foreign key takes anyway, taken
    before validation), on SQLite take the write lock first: an item deletion then waits for
    the batch and sees its events, and a batch that waited for a deletion finds the item gone
    (a 422, not a foreign-key error)."""
    dialect = _dialect(session)
    if lock and dialect == "sqlite":
        write_lock(session)  # SQLite: the database's write lock, before reading
    query = _items_query(dialect, lock and dialect != "sqlite")
    return set(session.scalars(query, _ids(session, item_ids)))


@cache
def _items_query(dialect: str, lock: bool) -> Select[tuple[str]]:
    query = select(ITEMS.c.item_id).where(_one_of(ITEMS.c.item_id, dialect))
    if lock:  # in id order: concurrent batches lock in the same order (no deadlocks)
        query = query.order_by(ITEMS.c.item_id).with_for_update(key_share=True)
    return query


def write_lock(session: Session) -> None:
    """SQLite: take the database's write lock now (a write that changes nothing), so what
    this transaction reads next cannot change before it writes. Other backends: nothing."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text("UPDATE items SET item_id = item_id WHERE 1 = 0"))


def ensure_users(session: Session, user_ids: Iterable[str]) -> set[str]:
    """Create the users that do not exist yet; returns those this call created. On PostgreSQL
    their rows are then held with a KEY SHARE lock until the transaction ends (concurrent
    batches do not wait for each other): an erasure of one of them (app.store.erasure) waits
    for this batch, and a batch that waited for an erasure re-creates the user, so its events
    outlive the erasure."""
    # Sorted so concurrent batches lock users in the same order (no deadlocks).
    wanted = sorted(set(user_ids))
    dialect = _dialect(session)
    if dialect != "postgresql":  # SQLite: the batch holds the database's write lock already
        return _insert_users(session, dialect, wanted)
    # Users that exist are locked first and only the others inserted: nearly every batch
    # is for known users, and then this is one statement, not an insert and a lock. A row
    # this transaction inserts needs no lock (no one else sees it before the commit).
    created: set[str] = set()
    for _ in range(5):
        if not wanted:
            return created
        held = set(session.scalars(_users_lock(dialect), _ids(session, wanted)))
        # not held: new, or erased while this waited for the erasure's lock
        missing = [user_id for user_id in wanted if user_id not in held]
        new = _insert_users(session, dialect, missing) if missing else set()
        created.update(new)
        # not inserted either: another batch created it meanwhile; lock it on the next round
        wanted = [user_id for user_id in missing if user_id not in new]
    if wanted:
        raise RuntimeError(f"{len(wanted)} user(s) erased again and again during one batch")
    return created


def _insert_users(session: Session, dialect: str, user_ids: Sequence[str]) -> set[str]:
    """Insert these users where they do not exist; returns those inserted."""
    if not user_ids:
        return set()
    now = utcnow()
    return set(session.scalars(_users_insert(dialect), [{"user_id": user_id, "created_at": now}
                                                        for user_id in user_ids]))


@cache
def _users_insert(dialect: str) -> Insert:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(USERS).on_conflict_do_nothing().returning(USERS.c.user_id)


@cache
def _users_lock(dialect: str) -> Select[tuple[str]]:
    return (select(USERS.c.user_id).where(_one_of(USERS.c.user_id, dialect))
            .order_by(USERS.c.user_id).with_for_update(key_share=True))


def drop_users_without_events(session: Session, user_ids: Iterable[str]) -> None:
    """Delete these users where they have no event (rows this transaction created for a batch
    whose rows for them all turned out to be duplicates: a user exists only with events)."""
    session.execute(_users_drop(_dialect(session)), _ids(session, user_ids))


@cache
def _users_drop(dialect: str) -> Delete:
    has_events = select(EVENTS.c.event_id).where(EVENTS.c.user_id == USERS.c.user_id).exists()
    return delete(USERS).where(_one_of(USERS.c.user_id, dialect), ~has_events)


def stored_events(session: Session, event_ids: Iterable[str]) -> dict[str, Event]:
    wanted = sorted(set(event_ids))
    found: dict[str, Event] = {}
    for chunk in _chunks(wanted):
        found.update((e.event_id, e) for e in session.scalars(
            select(Event).where(Event.event_id.in_(chunk))))
    return found


def _pg_array_type(column: Column[Any]) -> str:
    """The PostgreSQL array type a column's values are sent as."""
    sql_type = column.type
    if isinstance(sql_type, TypeDecorator):
        sql_type = sql_type.impl_instance
    if isinstance(sql_type, String) and not isinstance(sql_type, Text):
        return "varchar[]"  # no length: a cast to varchar(n) would truncate silently
    return f"{sql_type.compile(dialect=postgresql.dialect())}[]"


def _pg_bulk_insert(table: Table, columns: Sequence[Column[Any]], conflict: str) -> TextClause:
    """PostgreSQL: one statement whose parameters are column arrays, one per column. The
    generic multi-row VALUES path spends most of its time formatting and parsing the huge
    statement client-side. Rows are inserted in the arrays' order (`seq` follows the batch
    order: it breaks ties between equal timestamps); a conflict on `conflict` skips the row."""
    quote = postgresql.dialect().identifier_preparer.quote
    names = ", ".join(quote(column.name) for column in columns)
    arrays = ", ".join(f"CAST(:{column.name} AS {_pg_array_type(column)})" for column in columns)
    return text(f"""
        INSERT INTO {quote(table.name)} ({names})
        SELECT {names} FROM unnest({arrays}) WITH ORDINALITY AS batch({names}, position)
        ORDER BY position
        ON CONFLICT ({quote(conflict)}) DO NOTHING
        RETURNING {quote(conflict)}
    """)


# Every column but `seq`, taken from the table definition (app/store/models.py).
_EVENT_COLUMNS = written_columns(EVENTS)
_PG_INSERT_EVENTS = _pg_bulk_insert(EVENTS, _EVENT_COLUMNS, conflict="event_id")
# The same insert, announcing the rows' one user (see `insert_and_announce_events`).
_PG_INSERT_EVENTS_ANNOUNCED = text(f"""
    WITH inserted AS ({_PG_INSERT_EVENTS.text})
    SELECT event_id, pg_notify(:channel, :payload) FROM inserted
""")
_SQLITE_INSERT_EVENTS = (sqlite.insert(EVENTS)
                         .on_conflict_do_nothing(index_elements=[EVENTS.c.event_id])
                         .returning(EVENTS.c.event_id))


def _column_values(rows: Sequence[dict[str, Any]], column: Column[Any]) -> list[Any]:
    """One column of the rows as sent to PostgreSQL: JSON as text, the column's default where
    a row has no value for it."""
    default = column.default
    if any(column.name not in row for row in rows):
        if default is None or not (default.is_scalar or default.is_callable):
            raise KeyError(f"event rows lack {column.name!r}, which has no default")
        fill = default.arg(None) if default.is_callable else default.arg  # type: ignore[attr-defined]
        values = [row.get(column.name, fill) for row in rows]
    else:
        values = [row[column.name] for row in rows]
    sql_type = column.type.impl_instance if isinstance(column.type, TypeDecorator) else column.type
    if isinstance(sql_type, JSON):
        values = [json.dumps(value) for value in values]
    return values


def insert_events(session: Session, rows: Sequence[dict[str, Any]]) -> set[str]:
    """Insert events (rows keyed by column name), skipping event_ids already stored. Returns
    the event_ids inserted."""
    if not rows:
        return set()
    if session.get_bind().dialect.name == "postgresql":
        arrays = {column.name: _column_values(rows, column) for column in _EVENT_COLUMNS}
        return set(session.scalars(_PG_INSERT_EVENTS, arrays))
    return set(session.scalars(_SQLITE_INSERT_EVENTS, list(rows)))


def insert_and_announce_events(session: Session, rows: Sequence[dict[str, Any]]) -> set[str]:
    """`insert_events`, then `announce_changes` for the users of the rows it inserted.
    Returns the event_ids inserted.

    On PostgreSQL, rows of one user (most batches) are announced by the insert statement
    itself, a round trip fewer: the notification is sent from each inserted row, and
    PostgreSQL delivers identical notifications of one transaction once (none when every row
    was a duplicate, as without inserted rows there is nothing to announce)."""
    users = {row["user_id"] for row in rows}
    if len(users) == 1 and _dialect(session) == "postgresql":
        payloads = change_payloads(users)
        if len(payloads) == 1:
            arrays = {column.name: _column_values(rows, column) for column in _EVENT_COLUMNS}
            found = session.execute(_PG_INSERT_EVENTS_ANNOUNCED,
                                    {**arrays, "channel": CHANNEL, "payload": payloads[0]})
            return {event_id for event_id, _ in found}
    inserted = insert_events(session, rows)
    announce_changes(session, sorted({row["user_id"] for row in rows
                                      if row["event_id"] in inserted}))
    return inserted


def announce_changes(session: Session, user_ids: Iterable[str] | None) -> None:
    """Tell every serving process, when this transaction commits, that these users have new
    events (None: the catalogue changed). PostgreSQL NOTIFY; SQLite has none (serving there
    checks each user's event state instead)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for payload in change_payloads(user_ids):
        session.execute(text("SELECT pg_notify(:channel, :payload)"),
                        {"channel": CHANNEL, "payload": payload})


def announce_item_changes(session: Session, item_ids: Iterable[str]) -> None:
    """Tell every serving process, when this transaction commits, that these items were
    inserted or updated: each re-reads and re-embeds them (and forgets remembered answers,
    whose titles may have changed). PostgreSQL NOTIFY; on SQLite the one process does it
    from its own post-commit effect."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for payload in item_change_payloads(item_ids):
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
    rows = session.execute(_HISTORY, {"user_id": user_id, "limit": limit}).all()
    return [tuple(row) for row in reversed(rows)]  # type: ignore[misc]


_HISTORY = (select(EVENTS.c.event_id, EVENTS.c.item_id, EVENTS.c.occurred_at, EVENTS.c.value)
            .where(EVENTS.c.user_id == bindparam("user_id"))
            .order_by(EVENTS.c.occurred_at.desc(), EVENTS.c.seq.desc())
            .limit(bindparam("limit")))


CATALOGUE_COLUMNS = (Item.item_id, Item.title, Item.text, Item.categories, Item.active,
                     Item.available_from, Item.available_until)


def catalogue_rows(session: Session, item_ids: Iterable[str] | None = None,
                   chunk: int = 10_000) -> Iterator[Any]:
    """What serving needs of each item (the `CATALOGUE_COLUMNS`, as rows with those names),
    by item_id; `item_ids`: only these. Streamed: a million-item catalogue is never a
    million ORM objects at once."""
    if item_ids is not None:
        for ids in _chunks(sorted(set(item_ids))):
            yield from session.execute(select(*CATALOGUE_COLUMNS).where(Item.item_id.in_(ids)))
        return
    query = select(*CATALOGUE_COLUMNS).order_by(Item.item_id)
    yield from session.execute(query, execution_options={"yield_per": chunk})


def item_titles(session: Session, item_ids: Iterable[str]) -> dict[str, str]:
    """Titles of the given items that exist: two columns, no ORM objects (every response that
    names items reads these, so the full rows with text and attributes would be waste)."""
    wanted = set(item_ids)
    if not wanted:
        return {}
    rows = session.execute(_titles_query(_dialect(session)), _ids(session, wanted))
    return {item_id: title for item_id, title in rows}


@cache
def _titles_query(dialect: str) -> Select[tuple[str, str]]:
    return select(ITEMS.c.item_id, ITEMS.c.title).where(_one_of(ITEMS.c.item_id, dialect))


def count_user_events(session: Session, user_id: str) -> int:
    return int(session.scalar(_COUNT_USER_EVENTS, {"user_id": user_id}) or 0)


def user_event_state(session: Session, user_id: str) -> tuple[int, int | None]:
    """(event count, highest seq) of a user: one index-only read that changes whenever an
    event of the user is stored (events are only ever added), so it can key caches."""
    count, last_seq = session.execute(_USER_EVENT_STATE, {"user_id": user_id}).one()
    return int(count), last_seq


def user_item_ids(session: Session, user_id: str) -> set[str]:
    """Every item the user has an event on (for excluding seen items)."""
    return set(session.scalars(_USER_ITEMS, {"user_id": user_id}))


_OF_USER = EVENTS.c.user_id == bindparam("user_id")
_COUNT_USER_EVENTS = select(func.count()).select_from(EVENTS).where(_OF_USER)
_USER_EVENT_STATE = select(func.count(), func.max(EVENTS.c.seq)).where(_OF_USER)
_USER_ITEMS = select(EVENTS.c.item_id).where(_OF_USER).distinct()
