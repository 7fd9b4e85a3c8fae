"""Locks that hold across every serving process, taken through the store they all share.

PostgreSQL: a transaction-level advisory lock on a key derived from the lock's name; SQLite:
the database's write lock (one writer at a time: every other write waits while it is held,
so keep the block short). Either is released when the block's transaction ends, also when
the process dies holding it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.store.db import transaction
from app.store.repository import write_lock


def lock_key(name: str) -> int:
    """The signed 64-bit advisory-lock key of a name (stable across processes and runs)."""
    digest = hashlib.blake2b(name.encode(), digest_size=8, person=b"driftrec-lock").digest()
    return int.from_bytes(digest, "big", signed=True)


@contextmanager
def exclusive(factory: sessionmaker[Session], name: str) -> Iterator[None]:
    """Hold the lock `name` for the block: a second holder, in this process or another,
    waits until the first leaves it (PostgreSQL: up to the statement timeout; SQLite: the
    busy timeout)."""
    with transaction(factory) as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                            {"key": lock_key(name)})
        else:
            write_lock(session)
        yield
