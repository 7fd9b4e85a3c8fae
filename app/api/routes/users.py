"""Users: event history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import AdminScope, ReadScope, RuntimeDep, SessionDep, SettingsDep, UserIdPath
from app.core.errors import ApiError
from app.domain.limits import CURSOR_MAX_LENGTH
from app.schemas.common import Timestamp
from app.schemas.events import EventOut, EventPage
from app.schemas.lifecycle import ErasureOut
from app.services import history

router = APIRouter(prefix="/users", tags=["users"])


@router.get("/{user_id}/events", dependencies=[ReadScope], response_model=EventPage,
            responses={404: {"description": "Unknown user."}})
def user_events(
    user_id: UserIdPath,
    session: SessionDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Timestamp | None = None,
    cursor: Annotated[str | None, Query(min_length=1, max_length=CURSOR_MAX_LENGTH)] = None,
) -> EventPage:
    """The user's events, newest first; follow `next_cursor` for older pages."""
    page = history.user_events_page(session, user_id=user_id,
                                    limit=min(limit, settings.max_page_size), before=before,
                                    cursor=cursor)
    return EventPage(user_id=user_id, events=[EventOut.model_validate(e) for e in page.events],
                     next_cursor=page.next_cursor)


@router.delete("/{user_id}", dependencies=[AdminScope], response_model=ErasureOut,
               responses={404: {"description": "Unknown user (or already erased)."}})
def erase_user(user_id: UserIdPath, runtime: RuntimeDep) -> ErasureOut:
    """Erase the user's data: events, drift records, drift checks and the impressions of
    recommendations made for the user, in one transaction.

    Every worker forgets the user's remembered rankings and drift findings at once. An event
    acknowledged before this answer is gone; one acknowledged after it stays (the user exists
    again). A repeated call answers 404. The log records the erasure under a salted digest of
    the user, never the id. Models trained before it still carry the user's influence until
    the next retrain (README, Privacy)."""
    outcome = runtime.erasure.erase(user_id)
    if outcome is None:
        raise ApiError(404, "not_found", f"user '{user_id}' has no data")
    return ErasureOut(user_id=user_id, events_removed=outcome.events,
                      drift_records_removed=outcome.drift_records,
                      drift_checks_removed=outcome.drift_checks,
                      impressions_removed=outcome.impressions)
