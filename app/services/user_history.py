"""A user's recent events as the served model reads them, and the one loader of them."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.core.exceptions import UnknownUser
from app.store import repository


@dataclass(frozen=True, slots=True)
class History:
    """A user's recent events, oldest first (ties in ingestion order)."""

    event_ids: list[str]
    item_ids: list[str]
    timestamps: list[float]
    values: list[float | None]
    total: int  # all the user's events, of which these are the last len(item_ids)

    @property
    def offset(self) -> int:
        return self.total - len(self.item_ids)

    @classmethod
    def of_items(cls, item_ids: list[str], timestamps: list[float]) -> History:
        """A history given by a request (no stored events: no ids, no values)."""
        n = len(item_ids)
        return cls([""] * n, item_ids, timestamps, [None] * n, n)


def load_history(session: Session, user_id: str, limit: int, total: int | None = None
                 ) -> History:
    """The user's last `limit` events (`total`: their event count, when the caller has it)."""
    rows = repository.user_history_rows(session, user_id, limit)
    if not rows:
        raise UnknownUser(user_id)
    if total is None:
        total = len(rows) if len(rows) < limit else repository.count_user_events(session, user_id)
    return History([r[0] for r in rows], [r[1] for r in rows], [r[2].timestamp() for r in rows],
                   [r[3] for r in rows], total)
