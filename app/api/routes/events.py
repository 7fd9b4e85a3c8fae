"""Events: atomic, idempotent batch ingestion."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.deps import SessionDep, SettingsDep, WriteScope
from app.schemas.events import ConflictOut, EventBatch, IngestResult
from app.services import ingestion

router = APIRouter(prefix="/events", tags=["events"])


@router.post("", dependencies=[WriteScope], response_model=IngestResult,
             response_model_exclude_none=True,
             responses={422: {"description": "Invalid rows; nothing was written."},
                        503: {"description": "Database unavailable; nothing was written."}})
def post_events(batch: EventBatch, session: SessionDep, settings: SettingsDep, request: Request,
                detect_drift: bool = False) -> IngestResult:
    """Store a batch of events. Retries are safe: a repeated `event_id` counts as a duplicate
    (one whose content differs from the stored event is also listed in `conflicts`).

    The response is sent only after the batch is committed: an acknowledged event is stored.
    With `detect_drift=true` the batch's users are checked for drift in a bounded background
    queue after the commit (`drift_checks_queued` says how many were queued).
    """
    with session.begin():
        result = ingestion.ingest_events(session, batch.events, settings)
    request.app.state.metrics.count_events(result.accepted, result.duplicates)
    # before the acknowledgement: this process never answers from a ranking it knows is stale
    request.app.state.change_feed.users_changed(result.user_ids)
    queued = None
    if detect_drift:
        queued = request.app.state.drift_queue.submit(result.user_ids)
    return IngestResult(accepted=result.accepted, duplicates=result.duplicates,
                        conflicts=[ConflictOut(row=c.row, event_id=c.event_id)
                                   for c in result.conflicts] or None,
                        drift_checks_queued=queued)
