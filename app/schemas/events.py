"""Bodies of the events resource."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import EntityId, StorableText, Timestamp


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    event_id: EntityId | None = Field(
        default=None,
        description="Idempotency key. When absent, one is derived from the event's content, "
        "so a retried batch is still recognised.",
    )
    user_id: EntityId
    item_id: EntityId
    type: str = Field(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_]*$",
                      examples=["view", "click", "purchase", "rate"])
    value: float | None = Field(default=None, description="E.g. a rating; finite.")
    text: StorableText | None = Field(default=None, description="Optional text, e.g. a review.")
    timestamp: Timestamp
    context: dict[str, Any] = Field(default_factory=dict)


class EventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[EventIn] = Field(min_length=1)


class ConflictOut(BaseModel):
    row: int = Field(description="position of the row in the batch (0 = first)")
    event_id: str


class IngestResult(BaseModel):
    accepted: int = Field(description="Events stored by this request.")
    duplicates: int = Field(description="Events whose event_id was already stored (or repeated).")
    conflicts: list[ConflictOut] | None = Field(
        default=None,
        description="Present when some duplicates differ in content from the stored event of "
        "their event_id (or from the batch's first row with it): those rows were not stored, "
        "the stored event is kept.")
    drift_checks_queued: int | None = Field(
        default=None, description="With detect_drift=true: users queued for a drift check.")


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    event_id: str
    user_id: str
    item_id: str
    type: str
    value: float | None
    text: str | None
    timestamp: datetime
    context: dict[str, Any]
    ingested_at: datetime


class EventPage(BaseModel):
    user_id: str
    events: list[EventOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next (older) page; null on the last page."
    )
