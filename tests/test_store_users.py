"""`repository.ensure_users`, the user rows a batch of events needs: created where missing,
held (PostgreSQL) while the batch is written, in as few statements as the case allows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.store.db import make_engine, make_session_factory, transaction
from app.store.repository import ensure_users


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


def test_a_user_created_meanwhile_is_locked_after_all(database_url: str, engine: Engine
                                                      ) -> None:
    """Another batch commits the user between this one's lock and its insert: the insert
    finds it taken (not created by this call), and the next round holds its row."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite serialises writers: no batch commits in between")
    dsn = database_url.replace("postgresql+psycopg://", "postgresql://", 1)

    done: list[bool] = []

    def create_elsewhere(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().startswith("INSERT INTO users") and not done:
            done.append(True)
            with psycopg.connect(dsn, autocommit=True) as other:
                other.execute("INSERT INTO users (user_id, created_at) VALUES ('late', now())")

    event.listen(engine, "before_cursor_execute", create_elsewhere)
    factory = make_session_factory(engine)
    with transaction(factory) as session:
        assert ensure_users(session, ["late"]) == set()
        with psycopg.connect(dsn, autocommit=True) as other, pytest.raises(
                psycopg.errors.LockNotAvailable):
            other.execute("SELECT 1 FROM users WHERE user_id = 'late' FOR UPDATE NOWAIT")
