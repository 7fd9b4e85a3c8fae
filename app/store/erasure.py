"""Erasure of a user's data: events, drift records, drift checks and impressions, in one
transaction.

Concurrent ingestion for the same user (app.store.repository.ensure_users) holds a KEY SHARE
lock on the user's row while its batch is written; the erasure takes the row FOR UPDATE
first (PostgreSQL), so a batch either commits before the erasure reads anything (and is
erased with the rest) or waits and then re-creates the user after it (and stays). SQLite
serialises writers: the first statement is a write, so the erasure holds the database's
write lock before it reads anything.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from app.store.changes import CHANNEL, erasure_payloads
from app.store.impressions import delete_user_impressions
from app.store.models import DriftCheck, DriftRecord, Event, ServiceSecret, User

SALT_NAME = "erasure_salt"


@dataclass(frozen=True, slots=True)
class ErasedCounts:
    events: int
    drift_records: int
    drift_checks: int
    impressions: int


def erase_user(session: Session, user_id: str) -> ErasedCounts | None:
    """Delete everything stored of the user (None: no such user). The caller commits; the
    erasure is announced to every serving process when it does (PostgreSQL NOTIFY)."""
    postgres = session.get_bind().dialect.name == "postgresql"
    if postgres:
        locked = session.scalar(select(User.user_id).where(User.user_id == user_id)
                                .with_for_update())
        if locked is None:
            return None
    impressions = delete_user_impressions(session, user_id)
    checks = session.execute(delete(DriftCheck).where(DriftCheck.user_id == user_id)).rowcount
    records = session.execute(delete(DriftRecord).where(DriftRecord.user_id == user_id)).rowcount
    events = session.execute(delete(Event).where(Event.user_id == user_id)).rowcount
    users = session.execute(delete(User).where(User.user_id == user_id)).rowcount
    if not users:
        return None
    if postgres:
        for payload in erasure_payloads([user_id]):
            session.execute(text("SELECT pg_notify(:channel, :payload)"),
                            {"channel": CHANNEL, "payload": payload})
    return ErasedCounts(int(events or 0), int(records or 0), int(checks or 0), impressions)


def erasure_salt(session: Session) -> str:
    """The deployment's random salt for erasure log digests (created by migration 0003; made
    here if a store lacks it)."""
    salt = session.scalar(select(ServiceSecret.value).where(ServiceSecret.name == SALT_NAME))
    if salt is None:
        with session.begin_nested():
            session.merge(ServiceSecret(name=SALT_NAME, value=secrets.token_hex(32)))
        salt = session.scalar(select(ServiceSecret.value)
                              .where(ServiceSecret.name == SALT_NAME))
    return str(salt)
