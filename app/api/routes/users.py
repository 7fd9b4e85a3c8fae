"""Users: event history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import ReadScope, SessionDep, SettingsDep, UserIdPath
from app.core.exceptions import UnknownUser
from app.schemas.common import Timestamp
from app.schemas.events import EventOut, EventPage
from app.store import cursors, repository

router = APIRouter(prefix="/users", tags=["users"])


@router.get("/{user_id}/events", dependencies=[ReadScope], response_model=EventPage,
            responses={404: {"description": "Unknown user."}})
def user_events(
    user_id: UserIdPath,
    session: SessionDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Timestamp | None = None,
    cursor: Annotated[str | None, Query(min_length=1, max_length=cursors.MAX_CURSOR_CHARS)] = None,
) -> EventPage:
    """The user's events, newest first; follow `next_cursor` for older pages."""
    limit = min(limit, settings.max_page_size)
    after_key = cursors.decode(cursors.EVENTS, cursor) if cursor else None
    if not repository.user_has_events(session, user_id):
        raise UnknownUser(user_id)  # the 404 of every endpoint naming a user without events
    events = repository.user_events_page(session, user_id, limit + 1, before=before,
                                         after_key=after_key)
    page, more = events[:limit], len(events) > limit
    return EventPage(
        user_id=user_id,
        events=[EventOut.model_validate({**_event_fields(e)}) for e in page],
        next_cursor=(cursors.encode(cursors.EVENTS, page[-1].occurred_at, page[-1].seq)
                     if more else None),
    )


def _event_fields(event: object) -> dict[str, object]:
    names = ("event_id", "user_id", "item_id", "type", "value", "text", "context", "ingested_at")
    return {**{name: getattr(event, name) for name in names},
            "timestamp": event.occurred_at}  # type: ignore[attr-defined]
