"""Erasing a person's data: `DELETE /users/{user_id}`."""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.services.change_feed import ChangeFeed
from app.store import erasure
from app.store.db import transaction

logger = logging.getLogger("driftrec")

# The longest an erasure's answer waits for its notification to come back (normally a few
# milliseconds); past it, it answers anyway and logs that it did.
NOTICE_WAIT_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class ErasureOutcome:
    events: int
    drift_records: int
    drift_checks: int
    impressions: int


class UserErasure:
    def __init__(self, factory: sessionmaker[Session], settings: Settings,
                 after_erasure: Callable[[list[str]], None],
                 notices: ChangeFeed | None = None,
                 notice_wait_seconds: float = NOTICE_WAIT_SECONDS) -> None:
        self._factory = factory
        self._settings = settings
        self._after_erasure = after_erasure
        # PostgreSQL: the feed this process's listener fills (None: no notifications)
        self._notices = notices
        self._notice_wait = notice_wait_seconds

    def erase(self, user_id: str) -> ErasureOutcome | None:
        """Delete the user's events, drift records, drift checks and impressions in one
        transaction (None: no such user), then `after_erasure` (this process forgets what
        it remembers of the user before answering; other processes learn it from the NOTIFY
        sent with the commit). With `notices`, the answer also waits (at most
        `notice_wait_seconds`) until this process's listener has received that NOTIFY: every
        process's listener receives it at the same moment, so the other workers have
        forgotten the user by then too, rather than a few milliseconds after the answer.
        The log line names a salted digest of the user, never the id."""
        with self._awaiting([user_id]) as notice:
            with transaction(self._factory) as session:
                counts = erasure.erase_user(session, user_id)
                salt = self._settings.erasure_salt or (
                    erasure.erasure_salt(session) if counts is not None else "")
            if counts is None:
                return None
            self._after_erasure([user_id])
            heard = notice is None or notice.wait(self._notice_wait)
        digest = hmac.new(salt.encode(), user_id.encode(), hashlib.sha256).hexdigest()[:32]
        if not heard:
            logger.warning("erasure answered before its change notification came back "
                           "(%.1f s): other workers may serve the user's remembered answers "
                           "a little longer", self._notice_wait,
                           extra={"subject_digest": digest})
        logger.info("user data erased", extra={
            "subject_digest": digest, "events_removed": counts.events,
            "drift_records_removed": counts.drift_records,
            "drift_checks_removed": counts.drift_checks,
            "impressions_removed": counts.impressions})
        return ErasureOutcome(counts.events, counts.drift_records, counts.drift_checks,
                              counts.impressions)

    def _awaiting(self, user_ids: list[str]) -> AbstractContextManager[threading.Event | None]:
        if self._notices is None:
            return nullcontext(None)
        return self._notices.awaiting_erasure(user_ids)
