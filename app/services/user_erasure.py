"""Erasing a person's data: `DELETE /users/{user_id}`."""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.store import erasure
from app.store.db import transaction

logger = logging.getLogger("driftrec")


@dataclass(frozen=True, slots=True)
class ErasureOutcome:
    events: int
    drift_records: int
    drift_checks: int
    impressions: int


class UserErasure:
    def __init__(self, factory: sessionmaker[Session], settings: Settings,
                 after_erasure: Callable[[list[str]], None]) -> None:
        self._factory = factory
        self._settings = settings
        self._after_erasure = after_erasure

    def erase(self, user_id: str) -> ErasureOutcome | None:
        """Delete the user's events, drift records, drift checks and impressions in one
        transaction (None: no such user), then `after_erasure` (this process forgets what
        it remembers of the user before answering; other processes learn it from the NOTIFY
        sent with the commit). The log line names a salted digest of the user, never the
        id."""
        with transaction(self._factory) as session:
            counts = erasure.erase_user(session, user_id)
            salt = self._settings.erasure_salt or (
                erasure.erasure_salt(session) if counts is not None else "")
        if counts is None:
            return None
        self._after_erasure([user_id])
        digest = hmac.new(salt.encode(), user_id.encode(), hashlib.sha256).hexdigest()[:32]
        logger.info("user data erased", extra={
            "subject_digest": digest, "events_removed": counts.events,
            "drift_records_removed": counts.drift_records,
            "drift_checks_removed": counts.drift_checks,
            "impressions_removed": counts.impressions})
        return ErasureOutcome(counts.events, counts.drift_records, counts.drift_checks,
                              counts.impressions)
