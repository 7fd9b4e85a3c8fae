"""Bodies of the events resource.

An event's fields are declared once, by ``EventIn``: the response (``EventOut``) is the same
fields as stored, and ingestion stores each under the column of its name (``COLUMN_OF_FIELD``
renames the one that differs). The table (``app/store/models.py``) has a column per field; a
test checks they agree.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from app.domain.limits import EVENT_TYPE_MAX_LENGTH
from app.schemas.common import EntityId, StorableText, Timestamp

# Body field -> table column, where the names differ.
COLUMN_OF_FIELD = {"timestamp": "occurred_at"}


@cache
def _columns_of(model: type[BaseModel]) -> tuple[tuple[str, str], ...]:
    """(field, column) of each field of an events body (computed once per class: ingestion
    calls it for every event)."""
    return tuple((name, COLUMN_OF_FIELD.get(name, name)) for name in model.model_fields)


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    event_id: EntityId | None = Field(
        default=None,
        description="Idempotency key. When absent, one is derived from the event's content, "
        "so a retried batch is still recognised.",
    )
    user_id: EntityId
    item_id: EntityId
    type: str = Field(min_length=1, max_length=EVENT_TYPE_MAX_LENGTH, pattern=r"^[a-z][a-z0-9_]*$",
                      examples=["view", "click", "purchase", "rate"])
    # strict: a boolean or a numeral in a string is not a number (false would be stored as 0)
    value: float | None = Field(default=None, strict=True,
                                description="E.g. a rating; a finite JSON number.")
    text: StorableText | None = Field(default=None, description="Optional text, e.g. a review.")
    timestamp: Timestamp
    context: dict[str, Any] = Field(default_factory=dict)

    def columns(self) -> dict[str, Any]:
        """The event's fields under their table columns' names."""
        return {column: getattr(self, name) for name, column in _columns_of(type(self))}


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


class EventOut(EventIn):
    """A stored event: the fields of ``EventIn``, read from a row of the events table."""

    # every field is in every response: required in the schema clients generate code from
    model_config = ConfigDict(extra="ignore", from_attributes=True,
                              json_schema_serialization_defaults_required=True)

    event_id: str = Field(description="The event's id: the one sent, or the one derived.")
    timestamp: datetime = Field(
        validation_alias=AliasChoices("timestamp", COLUMN_OF_FIELD["timestamp"]))
    ingested_at: datetime


class EventPage(BaseModel):
    user_id: str
    events: list[EventOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next (older) page; null on the last page."
    )
