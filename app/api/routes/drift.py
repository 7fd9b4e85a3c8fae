"""Drift: a user's current status, the recorded history, and aggregates for dashboards."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from app.api.deps import ModelDep, ReadScope, SessionDep, UserIdPath
from app.core.errors import ApiError
from app.schemas.common import ID_MAX_LENGTH, ID_PATTERN, Timestamp
from app.schemas.serving import DriftHistoryOut, DriftOut, DriftSummaryOut
from app.services import interests
from app.store import drift_records

router = APIRouter(prefix="/drift", tags=["drift"])


@router.get("/history", dependencies=[ReadScope], response_model=DriftHistoryOut)
def drift_history(
    session: SessionDep,
    user_id: Annotated[str | None, Query(max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)] = None,
    since: Timestamp | None = None,
    until: Timestamp | None = None,
    kind: Literal["abrupt", "gradual"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict[str, Any]:
    """Recorded drifts, newest first; follow `next_cursor` for older ones."""
    try:
        records, next_cursor = drift_records.drift_history(
            session, user_id=user_id, since=since, until=until, kind=kind, limit=limit,
            cursor=cursor)
    except drift_records.InvalidCursor as error:
        raise ApiError(422, "validation_error", "cursor is not one this API returned",
                       detail=[{"loc": ["query", "cursor"], "msg": str(error),
                                "type": "invalid_cursor", "row": None, "field": "cursor"}]
                       ) from error
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
