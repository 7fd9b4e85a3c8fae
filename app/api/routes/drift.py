"""Drift: a user's current status, the recorded history, and aggregates for dashboards."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from app.api.deps import ModelDep, ReadScope, SessionDep, UserIdPath
from app.domain.limits import CURSOR_MAX_LENGTH
from app.schemas.common import ID_MAX_LENGTH, ID_PATTERN, Timestamp
from app.schemas.serving import DriftHistoryOut, DriftOut, DriftSummaryOut
from app.services import history

router = APIRouter(prefix="/drift", tags=["drift"])


@router.get("/history", dependencies=[ReadScope], response_model=DriftHistoryOut)
def drift_history(
    session: SessionDep,
    user_id: Annotated[str | None, Query(max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)] = None,
    since: Timestamp | None = None,
    until: Timestamp | None = None,
    kind: Literal["abrupt", "gradual", "recurring"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(min_length=1, max_length=CURSOR_MAX_LENGTH)] = None,
) -> dict[str, Any]:
    """Recorded drifts, newest first; follow `next_cursor` for older ones."""
    page = history.drift_history(session, user_id=user_id, since=since, until=until, kind=kind,
                                 limit=limit, cursor=cursor)
    return {"records": page.records, "next_cursor": page.next_cursor}


@router.get("/summary", dependencies=[ReadScope], response_model=DriftSummaryOut)
def drift_summary(
    session: SessionDep,
    since: Timestamp | None = None,
    until: Timestamp | None = None,
    bucket: Literal["hour", "day", "week"] = "day",
    transitions: Annotated[int, Query(ge=1, le=100)] = 10,
) -> dict[str, Any]:
    """Per time bucket: users checked, drifts, drift rate; and the top topic transitions."""
    summary = history.drift_summary(session, since=since, until=until, bucket=bucket,
                                    transitions=transitions)
    return {"bucket": bucket, "since": since, "until": until, "buckets": summary.buckets,
            "transitions": summary.transitions}


@router.get("/{user_id}", dependencies=[ReadScope], response_model=DriftOut,
            responses={404: {"description": "Unknown user."},
                       503: {"description": "No model is loaded."}})
def user_drift(user_id: UserIdPath, session: SessionDep, model: ModelDep) -> DriftOut:
    """Has the user's interest drifted? A detected change point is recorded once."""
    with session.begin():
        return model.check_drift(session, user_id)
