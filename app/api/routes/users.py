"""Users: event history."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import AdminScope, ReadScope, RuntimeDep, SessionDep, SettingsDep, UserIdPath
from app.core.errors import ApiError
from app.schemas.common import parse_timestamp
from app.schemas.events import EventOut, EventPage
from app.schemas.lifecycle import ErasureOut
from app.store import repository

router = APIRouter(prefix="/users", tags=["users"])


def encode_cursor(at: datetime, seq: int) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{seq}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        at_text, seq_text = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(at_text).astimezone(UTC), int(seq_text)
    except (ValueError, binascii.Error, UnicodeDecodeError) as error:
        raise ApiError(422, "validation_error", "cursor is not one this API returned",
                       detail=[{"loc": ["query", "cursor"], "msg": "invalid cursor",
                                "type": "invalid_cursor", "row": None, "field": "cursor"}]
                       ) from error


def _parse_before(before: str | None) -> datetime | None:
    if before is None:
        return None
    try:
        return parse_timestamp(before)
    except ValueError as error:
        raise ApiError(422, "validation_error", f"before: {error}",
                       detail=[{"loc": ["query", "before"], "msg": str(error),
                                "type": "invalid_timestamp", "row": None, "field": "before"}]
                       ) from error


@router.get("/{user_id}/events", dependencies=[ReadScope], response_model=EventPage,
            responses={404: {"description": "Unknown user."}})
def user_events(
    user_id: UserIdPath,
    session: SessionDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[str | None, Query(description="ISO-8601 or epoch seconds")] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> EventPage:
    """The user's events, newest first; follow `next_cursor` for older pages."""
    limit = min(limit, settings.max_page_size)
    if not repository.user_exists(session, user_id):
        raise ApiError(404, "not_found", f"user '{user_id}' has no events")
    events = repository.user_events_page(
        session, user_id, limit + 1, before=_parse_before(before),
        after_key=decode_cursor(cursor) if cursor else None,
    )
    page, more = events[:limit], len(events) > limit
    return EventPage(
        user_id=user_id,
        events=[EventOut.model_validate(e) for e in page],
        next_cursor=encode_cursor(page[-1].occurred_at, page[-1].seq) if more else None,
    )



@router.delete("/{user_id}", dependencies=[AdminScope], response_model=ErasureOut,
               responses={404: {"description": "Unknown user (or already erased)."}})
def erase_user(user_id: UserIdPath, runtime: RuntimeDep) -> ErasureOut:
    """Erase the user's data: events, drift records and drift checks, in one transaction.

    Every worker forgets the user's remembered rankings and drift findings at once. An event
    acknowledged before this answer is gone; one acknowledged after it stays (the user exists
    again). A repeated call answers 404. The log records the erasure under a salted digest of
    the user, never the id. Models trained before it still carry the user's influence until
    the next retrain (README, Privacy)."""
    outcome = runtime.erase_user(user_id)
    if outcome is None:
        raise ApiError(404, "not_found", f"user '{user_id}' has no data")
    return ErasureOut(user_id=user_id, events_removed=outcome.events,
                      drift_records_removed=outcome.drift_records,
                      drift_checks_removed=outcome.drift_checks)
