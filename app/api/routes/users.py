"""Users: event history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import ReadScope, SessionDep, SettingsDep, UserIdPath
from app.domain.limits import CURSOR_MAX_LENGTH
from app.schemas.common import Timestamp
from app.schemas.events import EventOut, EventPage
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
