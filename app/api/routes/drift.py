"""Drift: a user's current status, the recorded history, and aggregates for dashboards."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from app.api.deps import ModelDep, ReadScope, SessionDep, UserIdPath
from app.schemas.common import ID_MAX_LENGTH, ID_PATTERN, Timestamp
from app.schemas.serving import DriftHistoryOut, DriftOut, DriftSummaryOut
from app.services import interests
from app.store import drift_records
from app.store.cursors import MAX_CURSOR_CHARS

router = APIRouter(prefix="/drift", tags=["drift"])


@router.get("/history", dependencies=[ReadScope], response_model=DriftHistoryOut)
def drift_history(
    session: SessionDep,
    user_id: Annotated[str | None, Query(max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)] = None,
    since: Timestamp | None = None,
    until: Timestamp | None = None,
    kind: Literal["abrupt", "gradual"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(min_length=1, max_length=MAX_CURSOR_CHARS)] = None,
) -> dict[str, Any]:
    """Recorded drifts, newest first; follow `next_cursor` for older ones."""
    records, next_cursor = drift_records.drift_history(  # a bad cursor: InvalidCursor, a 422
        session, user_id=user_id, since=since, until=until, kind=kind, limit=limit,
        cursor=cursor)
    return {"records": records, "next_cursor": next_cursor}


@router.get("/summary", dependencies=[ReadScope], response_model=DriftSummaryOut)
def drift_summary(
    session: SessionDep,
    since: Timestamp | None = None,
    until: Timestamp | None = None,
    bucket: Literal["hour", "day", "week"] = "day",
    transitions: Annotated[int, Query(ge=1, le=100)] = 10,
) -> dict[str, Any]:
    """Per time bucket: users checked, drifts, drift rate; and the top topic transitions."""
    return {
        "bucket": bucket, "since": since, "until": until,
        "buckets": drift_records.drift_summary(session, since, until, bucket),
        "transitions": drift_records.top_transitions(session, since, until, transitions),
    }


@router.get("/{user_id}", dependencies=[ReadScope], response_model=DriftOut,
            responses={404: {"description": "Unknown user."},
                       503: {"description": "No model is loaded."}})
def user_drift(user_id: UserIdPath, session: SessionDep, model: ModelDep) -> dict[str, Any]:
    """Has the user's interest drifted? A detected change point is recorded once."""
    with session.begin():
        return interests.check_drift(session, model, user_id)
