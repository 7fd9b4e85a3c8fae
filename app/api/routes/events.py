"""Events: atomic, idempotent batch ingestion."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import RuntimeDep, WriteScope
from app.schemas.events import ConflictOut, EventBatch, IngestResult

router = APIRouter(prefix="/events", tags=["events"])


@router.post("", dependencies=[WriteScope], response_model=IngestResult,
             response_model_exclude_none=True,
             responses={422: {"description": "Invalid rows; nothing was written."},
                        503: {"description": "Database unavailable; nothing was written."}})
async def post_events(batch: EventBatch, runtime: RuntimeDep, detect_drift: bool = False
                      ) -> IngestResult:
    """Store a batch of events. Retries are safe: a repeated `event_id` counts as a duplicate
    (one whose content differs from the stored event is also listed in `conflicts`).

    The response is sent only after the batch is committed: an acknowledged event is stored.
    With `detect_drift=true` the batch's users are checked for drift in a bounded background
    queue after the commit (`drift_checks_queued` says how many were queued).
    """
    # async, with one thread hop for the transaction (none with group commits): a sync
    # handler took a second hop to validate its own response
    outcome = await runtime.events.submit(batch.events, detect_drift)
    return IngestResult(accepted=outcome.accepted, duplicates=outcome.duplicates,
                        conflicts=[ConflictOut(row=c.row, event_id=c.event_id)
                                   for c in outcome.conflicts] or None,
                        drift_checks_queued=outcome.drift_checks_queued)
