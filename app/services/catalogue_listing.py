"""The catalogue as API clients page through it (`GET /items`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from app.domain.availability import is_available
from app.store import catalogue as catalogue_store
from app.store.models import Item


def list_catalogue(session: Session, limit: int, now: datetime, active: bool | None,
                   category: str | None, cursor: str | None
                   ) -> tuple[list[dict[str, object]], str | None]:
    """One page of items (each with `available_now`) and the cursor of the next."""
    page, next_cursor = catalogue_store.list_items(session, limit, now, active, category,
                                                   cursor)
    return [catalogue_entry(item, now) for item in page], next_cursor


def catalogue_entry(item: Item, now: datetime) -> dict[str, object]:
    window = (None if item.available_from is None else item.available_from.timestamp(),
              None if item.available_until is None else item.available_until.timestamp())
    return {"item_id": item.item_id, "title": item.title, "text": item.text,
            "categories": list(item.categories or []), "attributes": dict(item.attributes or {}),
            "active": bool(item.active), "available_from": item.available_from,
            "available_until": item.available_until,
            "available_now": is_available(bool(item.active), window, now.timestamp()),
            "created_at": item.created_at, "updated_at": item.updated_at}
