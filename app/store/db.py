"""Engine and session factory: the same code for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # SQLite ignores foreign keys unless asked; WAL lets readers run beside the writer;
    # busy_timeout makes concurrent writers wait instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(database_url: str, statement_timeout_ms: int | None = None,
                **kwargs: Any) -> Engine:
    """An engine for either backend. `statement_timeout_ms` (PostgreSQL): the server cancels
    a statement running longer, so a stuck query cannot hold a request forever."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    # pool_pre_ping drops connections that died while PostgreSQL was away, so the service
    # recovers from an outage on its own.
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    kwargs.setdefault("pool_timeout", 5)
    # TCP keepalives: a connection whose peer vanished (a cut network, not a refused one)
    # fails within ~25 s instead of hanging its request.
    connect_args: dict[str, Any] = {"connect_timeout": 5, "keepalives": 1,
                                    "keepalives_idle": 10, "keepalives_interval": 5,
                                    "keepalives_count": 3}
    if statement_timeout_ms:
        connect_args["options"] = f"-c statement_timeout={int(statement_timeout_ms)}"
    kwargs.setdefault("connect_args", connect_args)
    return create_engine(url, **kwargs)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def make_read_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions for reads only (a request's history, titles). On PostgreSQL their connections
    run in autocommit: no BEGIN before the first statement and no ROLLBACK when the session
    closes (two round trips per request); each statement sees what was committed before it,
    as under READ COMMITTED. Other backends: ordinary sessions."""
    if engine.dialect.name != "postgresql":
        return make_session_factory(engine)
    return make_session_factory(engine.execution_options(isolation_level="AUTOCOMMIT"))


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work is committed on success and rolled back on any error."""
    with factory() as session, session.begin():
        yield session


def reachable(factory: sessionmaker[Session]) -> bool:
    """Whether the database answers a trivial query now."""
    try:
        with factory() as session:
            session.execute(text("SELECT 1"))
    except SQLAlchemyError:
        return False
    return True


def ping(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
