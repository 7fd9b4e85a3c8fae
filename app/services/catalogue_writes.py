"""Writes to the catalogue: upserts, an item's lifecycle (retire, window), deletion.

Each is one transaction; after the commit `after_change` runs with the item ids (the runtime
forgets remembered answers and hands the ids to the catalogue refresher, which embeds them
in the background; other processes learn it from the NOTIFY sent with the commit)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.schemas.items import ItemIn
from app.services import ingestion
from app.store import catalogue as catalogue_store
from app.store import repository
from app.store.db import transaction
from app.store.models import Item

DeleteOutcome = Literal["deleted", "retired", "in_use"]


class InvalidWindow(ValueError):
    """available_until would not be after available_from."""


class CatalogueWrites:
    def __init__(self, factory: sessionmaker[Session], settings: Settings,
                 after_change: Callable[[Sequence[str]], None]) -> None:
        self._factory = factory
        self._settings = settings
        self._after_change = after_change

    def upsert(self, items: Sequence[ItemIn]) -> int:
        """Insert or update items (atomic); they are embedded in the background after it."""
        with transaction(self._factory) as session:
            count = ingestion.upsert_items(session, items, self._settings)
        self._after_change(sorted({item.item_id for item in items}))
        return count

    def update_lifecycle(self, item_id: str, changes: dict[str, Any]) -> Item | None:
        """Retire an item, bring it back or set its window (None: no such item). Every worker
        stops (or starts) recommending it once its refresher has re-read it, normally well
        within a second of the commit."""
        with transaction(self._factory) as session:
            item = catalogue_store.lock_item(session, item_id)
            if item is None:
                return None
            start = changes.get("available_from", item.available_from)
            end = changes.get("available_until", item.available_until)
            if start is not None and end is not None and end <= start:
                raise InvalidWindow("available_until must be after available_from")
            catalogue_store.set_lifecycle(session, item, changes)
            repository.announce_item_changes(session, [item_id])
        self._after_change([item_id])
        return item

    def delete(self, item_id: str, retire: bool) -> DeleteOutcome | None:
        """Delete an item no event references; one that events reference is refused
        ("in_use"), or retired with `retire` (its events stay in the histories). None: no
        such item."""
        with transaction(self._factory) as session:
            item = catalogue_store.lock_item(session, item_id)
            if item is None:
                return None
            outcome: DeleteOutcome
            if catalogue_store.has_events(session, item_id):
                if not retire:
                    return "in_use"
                catalogue_store.set_lifecycle(session, item, {"active": False})
                outcome = "retired"
            else:
                catalogue_store.delete_item(session, item_id)
                outcome = "deleted"
            repository.announce_item_changes(session, [item_id])
        self._after_change([item_id])
        return outcome
