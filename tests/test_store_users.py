"""What the store does for a batch of events: `ensure_users` (the user rows, created where
missing and held on PostgreSQL while the batch is written) and `insert_and_announce_events`
(the rows, and the notification that tells every serving process), in as few statements as
the case allows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.store.changes import CHANNEL
from app.store.db import make_engine, make_session_factory, transaction
from app.store.repository import ensure_users, insert_and_announce_events


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def _statements(engine: Engine) -> list[str]:
    """The SQL statements `engine` runs from now on (appended as they run)."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(" ".join(statement.split()))

    event.listen(engine, "before_cursor_execute", record)
    return seen


def test_creates_the_missing_users_only(factory: sessionmaker[Session]) -> None:
    # the `factory` fixture knows u1, u2 and u3
    with transaction(factory) as session:
        assert ensure_users(session, ["u2", "n1", "u1", "n2", "n1"]) == {"n1", "n2"}
    with transaction(factory) as session:
        assert ensure_users(session, ["n1", "n2", "u3"]) == set()
        users = set(session.scalars(text("SELECT user_id FROM users")))
    assert users == {"u1", "u2", "u3", "n1", "n2"}


def test_known_users_cost_one_statement_on_postgresql(engine: Engine) -> None:
    factory = make_session_factory(engine)
    with transaction(factory) as session:
        ensure_users(session, ["k1", "k2"])
    seen = _statements(engine)
    with transaction(factory) as session:
        assert ensure_users(session, ["k2", "k1"]) == set()
    written = [s for s in seen if "users" in s]
    if engine.dialect.name == "postgresql":
        # the lock alone: nothing to insert
        assert len(written) == 1 and written[0].startswith("SELECT"), written
    else:
        assert len(written) == 1 and written[0].startswith("INSERT"), written


def test_a_user_created_meanwhile_is_locked_after_all(pg_database: str) -> None:
    """Another batch commits the user between this one's lock and its insert (PostgreSQL
    only: SQLite serialises writers): the insert finds it taken (not created by this call),
    and the next round holds its row."""
    _truncate(pg_database)
    engine = make_engine(pg_database)
    dsn = pg_database.replace("postgresql+psycopg://", "postgresql://", 1)

    done: list[bool] = []

    def create_elsewhere(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().startswith("INSERT INTO users") and not done:
            done.append(True)
            with psycopg.connect(dsn, autocommit=True) as other:
                other.execute("INSERT INTO users (user_id, created_at) VALUES ('late', now())")

    event.listen(engine, "before_cursor_execute", create_elsewhere)
    factory = make_session_factory(engine)
    try:
        with transaction(factory) as session:
            assert ensure_users(session, ["late"]) == set()
            with psycopg.connect(dsn, autocommit=True) as other, pytest.raises(
                    psycopg.errors.LockNotAvailable):
                other.execute("SELECT 1 FROM users WHERE user_id = 'late' FOR UPDATE NOWAIT")
    finally:
        engine.dispose()
    assert done, "the other batch's insert never ran"


# ------------------------------------------------------------------ events announced
def _rows(user_ids: list[str], prefix: str) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    return [{"event_id": f"{prefix}-{i}", "user_id": user_id, "item_id": "i1", "type": "view",
             "value": None, "text": None, "occurred_at": now, "context": {},
             "ingested_at": now} for i, user_id in enumerate(user_ids)]


def _heard(dsn: str, write: Callable[[], None]) -> list[str]:
    """The change payloads a listener hears while `write` runs and commits."""
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        write()
        return [n.payload for n in listener.notifies(timeout=0.5, stop_after=10)]


@pytest.mark.parametrize("users", [["a1", "a1"], ["b2", "b1", "b2"]])
def test_inserted_events_are_announced_once_per_user(pg_database: str,
                                                     users: list[str]) -> None:
    """One user's rows: announced by the insert statement itself (no statement of its own);
    several users: one payload naming each, as `announce_changes` sends it. A batch of
    duplicates announces nothing."""
    _truncate(pg_database)
    engine = make_engine(pg_database)
    factory = make_session_factory(engine)
    dsn = pg_database.replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        with transaction(factory) as session:
            session.execute(text("INSERT INTO items (item_id, title, categories, attributes, "
                                 "created_at, updated_at, active) VALUES ('i1', 'I', '[]', "
                                 "'{}', now(), now(), true)"))
            ensure_users(session, users)
        seen = _statements(engine)
        inserted: set[str] = set()

        def write() -> None:
            with transaction(factory) as session:
                inserted.update(insert_and_announce_events(session, _rows(users, "e")))

        assert _heard(dsn, write) == ["\n".join(sorted(set(users)))]
        assert inserted == {f"e-{i}" for i in range(len(users))}
        separate = [s for s in seen if s.startswith("SELECT pg_notify")]
        assert len(separate) == (0 if len(set(users)) == 1 else 1), seen
        assert _heard(dsn, write) == [] and inserted == {f"e-{i}" for i in range(len(users))}
    finally:
        engine.dispose()


def _truncate(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("TRUNCATE events, users, items RESTART IDENTITY CASCADE"))
    engine.dispose()
