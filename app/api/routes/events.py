"""Events: atomic, idempotent batch ingestion."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import SessionDep, SettingsDep, WriteScope
from app.schemas.events import EventBatch, IngestResult
from app.services import ingestion

router = APIRouter(prefix="/events", tags=["events"])


@router.post("", dependencies=[WriteScope], response_model=IngestResult,
             responses={422: {"description": "Invalid rows; nothing was written."},
                        503: {"description": "Database unavailable; nothing was written."}})
def post_events(batch: EventBatch, session: SessionDep, settings: SettingsDep) -> IngestResult:
    """Store a batch of events. Retries are safe: a repeated `event_id` counts as a duplicate.

    The response is sent only after the batch is committed: an acknowledged event is stored.
    """
    with session.begin():
        result = ingestion.ingest_events(session, batch.events, settings)
    return IngestResult(accepted=result.accepted, duplicates=result.duplicates)
