"""The user list of a batch drift scan as SQL text and a DB-API connection, for readers that
run outside SQLAlchemy (Ray Data's `read_sql` in app.services.drift_scan_ray).

Ray Data reads in shards by running the query once per shard with
``WHERE MOD(ABS(<hash>(CONCAT(user_id))), shards) = i``: on PostgreSQL the hash is
``hashtext`` (an integer: ``MD5`` gives text, which ``ABS`` rejects); SQLite has neither
``MOD`` nor ``CONCAT``, so there the read is one task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.engine import make_url

from app.store.models import DriftCheck, User

SHARD_KEY = "user_id"


def users_to_scan_sql(engine: Engine, unchecked_only: bool = False,
                      user_ids: Sequence[str] | None = None) -> str:
    """`drift_records.user_ids_to_scan` as one SQL string (no parameters) of `engine`'s
    dialect, one column `user_id`; `user_ids`: only these of the stored users (a sample,
    e.g. bench/scale.py's)."""
    query = select(User.user_id.label(SHARD_KEY))
    if user_ids is not None:
        query = query.where(User.user_id.in_(sorted(set(user_ids))))
    if unchecked_only:
        query = query.where(~select(DriftCheck.id).where(DriftCheck.user_id == User.user_id)
                            .exists())
    return str(query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))


def shard_hash_function(database_url: str) -> str | None:
    """The SQL hash Ray Data shards by; None: the backend cannot shard (SQLite: one task)."""
    return "hashtext" if make_url(database_url).get_backend_name() == "postgresql" else None


def dbapi_connection(database_url: str) -> Any:
    """A fresh DB-API connection of the driver itself (the caller closes it)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        import sqlite3

        return sqlite3.connect(url.database or ":memory:", timeout=30)
    import psycopg

    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    return psycopg.connect(conninfo, connect_timeout=10)
