"""Ingestion: batch validation beyond the schema, idempotency keys, atomic writes.

The API and the MovieLens importer both go through these functions, so there is one
path into the store. Callers run them inside a transaction: a rejected batch writes nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.exceptions import BatchRejected, RowError
from app.schemas.events import EventIn
from app.schemas.items import ItemIn
from app.store import repository


@dataclass(frozen=True, slots=True)
class Conflict:
    """A batch row whose event_id is already taken by an event with other content."""

    row: int
    event_id: str


@dataclass(frozen=True, slots=True)
class EventIngestResult:
    accepted: int
    duplicates: int
    user_ids: list[str]  # users with an event stored by this batch
    conflicts: list[Conflict]


# What a derived event id hashes, frozen: the fields of EventIn when ids were first derived, in
# this order. A field added to events later must NOT join the list: it would change every
# derived id, and a batch retried across that deploy would be stored twice. A new scheme gets a
# new version, whose ids carry its own prefix, and this one stays as it is.
DERIVED_ID_V1_FIELDS = ("user_id", "item_id", "type", "value", "text", "timestamp", "context")
# v1 ids are "ev-" + the first 40 hex digits of the SHA-256 of the canonical JSON of those
# fields (timestamps as UTC ISO-8601); versions after it hash "v<N>:" + their canonical form.
DERIVED_ID_V1_PREFIX = "ev-"


def derive_event_id(event: EventIn) -> str:
    """A deterministic id from the event's content, so retries without ids still deduplicate
    (the v1 scheme above: the same id for the same fields whatever else events carry)."""
    values = [getattr(event, name) for name in DERIVED_ID_V1_FIELDS]
    values[DERIVED_ID_V1_FIELDS.index("timestamp")] = event.timestamp.astimezone(UTC).isoformat()
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return DERIVED_ID_V1_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()[:40]


def _json_size(value: Any) -> int | str:
    """Bytes of `value` as UTF-8 JSON, or what makes it unstorable: NaN or an infinity (not
    JSON; PostgreSQL's json type refuses them), or an unpaired surrogate (no UTF-8 form: the
    row would be stored, then fail every response that carries it)."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return "holds NaN or an infinite number (not JSON)"
    try:
        return len(text.encode())
    except UnicodeEncodeError:
        return "holds an unpaired surrogate (not valid Unicode)"


def _check_size(collection: str, count: int, limit: int) -> None:
    if count > limit:
        raise BatchRejected([RowError(collection, count - 1, collection,
                                      f"batch of {count} rows exceeds the limit of {limit}",
                                      "batch_too_large")])


def _size_errors(collection: str, index: int, text: str | None, json_field: str,
                 json_value: Any, settings: Settings) -> list[RowError]:
    """Limits shared by items and events: free text length, JSON object size."""
    errors = []
    if text is not None and len(text) > settings.max_text_chars:
        errors.append(RowError(collection, index, "text",
                               f"text longer than {settings.max_text_chars} characters",
                               "text_too_long"))
    size = _json_size(json_value)
    if isinstance(size, str):
        errors.append(RowError(collection, index, json_field, f"{json_field} {size}",
                               f"{json_field}_not_storable"))
    elif size > settings.max_json_field_bytes:
        errors.append(RowError(collection, index, json_field,
                               f"{json_field} larger than {settings.max_json_field_bytes} bytes",
                               f"{json_field}_too_large"))
    return errors


def _event_row_errors(index: int, event: EventIn, settings: Settings,
                      now: datetime) -> list[RowError]:
    errors = _size_errors("events", index, event.text, "context", event.context, settings)
    if event.timestamp > now + timedelta(seconds=settings.max_future_skew_seconds):
        errors.append(RowError("events", index, "timestamp",
                               "timestamp is in the future", "timestamp_in_future"))
    return errors


def ingest_events(session: Session, events: Sequence[EventIn], settings: Settings,
                  now: datetime | None = None) -> EventIngestResult:
    """Validate and store a batch of events atomically; repeated event_ids count as duplicates."""
    _check_size("events", len(events), settings.max_batch_events)
    now = now or datetime.now(UTC)
    errors = [error for i, event in enumerate(events)
              for error in _event_row_errors(i, event, settings, now)]
    known_items = repository.existing_item_ids(session, (event.item_id for event in events),
                                               lock=True)
    errors += [RowError("events", i, "item_id", f"unknown item '{event.item_id}': "
                        "POST it to /items first", "unknown_item")
               for i, event in enumerate(events) if event.item_id not in known_items]
    if errors:
        raise BatchRejected(sorted(errors, key=lambda error: error.row))

    rows: dict[str, dict[str, Any]] = {}
    positions: dict[str, list[int]] = {}  # batch rows of each event_id
    for position, event in enumerate(events):
        event_id = event.event_id or derive_event_id(event)
        # every field of the body under its column's name (the table defines the columns)
        rows.setdefault(event_id, {**event.columns(), "event_id": event_id, "ingested_at": now})
        positions.setdefault(event_id, []).append(position)
    # Users only for stored events: a user row whose batch rows were all duplicates would be
    # a user without events (every endpoint answers 404 for it, the drift scan has nothing).
    created = repository.ensure_users(session, {row["user_id"] for row in rows.values()})
    # serving processes forget the users' remembered rankings when this commits
    inserted = repository.insert_and_announce_events(session, list(rows.values()))
    user_ids = sorted({rows[e]["user_id"] for e in inserted})
    if created - set(user_ids):
        repository.drop_users_without_events(session, created - set(user_ids))
    conflicts = _conflicts(session, events, rows, positions, inserted)
    return EventIngestResult(accepted=len(inserted), duplicates=len(events) - len(inserted),
                             user_ids=user_ids, conflicts=conflicts)


def _content(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["user_id"], row["item_id"], row["type"], row["value"], row["text"],
            row["occurred_at"].astimezone(UTC), json.dumps(row["context"], sort_keys=True))


def _conflicts(session: Session, events: Sequence[EventIn], rows: dict[str, dict[str, Any]],
               positions: dict[str, list[int]], inserted: set[str]) -> list[Conflict]:
    """Duplicates whose content differs from the stored event of their id (or from the first
    row of the batch with that id): not stored, and named in the response."""
    repeated = {e for e, rows_of_id in positions.items() if e not in inserted or
                len(rows_of_id) > 1}
    if not repeated:
        return []
    stored = repository.stored_events(session, repeated - inserted)
    conflicts = []
    for event_id in sorted(repeated, key=lambda e: positions[e][0]):
        if event_id in stored:
            event = stored[event_id]
            reference = _content({"user_id": event.user_id, "item_id": event.item_id,
                                  "type": event.type, "value": event.value, "text": event.text,
                                  "occurred_at": event.occurred_at, "context": event.context})
            candidates = positions[event_id]
        else:  # first stored by this batch: later rows with its id are compared to it
            reference = _content(rows[event_id])
            candidates = positions[event_id][1:]
        for position in candidates:
            event_in = events[position]
            content = _content({"user_id": event_in.user_id, "item_id": event_in.item_id,
                                "type": event_in.type, "value": event_in.value,
                                "text": event_in.text, "occurred_at": event_in.timestamp,
                                "context": event_in.context})
            if content != reference:
                conflicts.append(Conflict(position, event_id))
    return sorted(conflicts, key=lambda c: c.row)


def upsert_items(session: Session, items: Sequence[ItemIn], settings: Settings) -> int:
    """Validate and upsert a batch of items atomically (the last row wins for a repeated id)."""
    _check_size("items", len(items), settings.max_batch_items)
    errors = [error for i, item in enumerate(items) for error in
              _size_errors("items", i, item.text, "attributes", item.attributes, settings)]
    if errors:
        raise BatchRejected(errors)
    rows = {item.item_id: item.model_dump() for item in items}
    count = repository.upsert_items(session, [rows[key] for key in sorted(rows)])
    # every serving process re-embeds these items and forgets answers (titles may have changed)
    repository.announce_item_changes(session, sorted(rows))
    return count
