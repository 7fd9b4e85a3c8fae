"""SQL of the item lifecycle: retiring, windows, deletion, and the catalogue listing."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, exists, func, not_, or_, select, text
from sqlalchemy.orm import Session

from app.store import cursors, repository
from app.store.models import Event, Item, utcnow


def lock_item(session: Session, item_id: str) -> Item | None:
    """The item, its row locked until the transaction ends (PostgreSQL; SQLite serialises
    writers: the write lock is taken first)."""
    repository.write_lock(session)
    return session.scalar(select(Item).where(Item.item_id == item_id).with_for_update())


def set_lifecycle(session: Session, item: Item, changes: dict[str, Any]) -> Item:
    """Apply `active` / `available_from` / `available_until` changes to a (locked) item."""
    for name in ("active", "available_from", "available_until"):
        if name in changes:
            setattr(item, name, changes[name])
    item.updated_at = utcnow()
    session.flush()
    return item


def has_events(session: Session, item_id: str) -> bool:
    return bool(session.scalar(select(exists().where(Event.item_id == item_id))))


def delete_item(session: Session, item_id: str) -> None:
    session.execute(delete(Item).where(Item.item_id == item_id))


def available_clause(now: datetime) -> ColumnElement[bool]:
    """SQL for "active and inside its window at `now`" (as app.domain.availability)."""
    return and_(Item.active.is_(True),
                or_(Item.available_from.is_(None), Item.available_from <= now),
                or_(Item.available_until.is_(None), Item.available_until > now))


def _has_category(session: Session, category: str) -> ColumnElement[bool]:
    if session.get_bind().dialect.name == "postgresql":
        return text("CAST(items.categories AS jsonb) @> CAST(:wanted AS jsonb)").bindparams(
            wanted=_json_list(category))
    return text("EXISTS (SELECT 1 FROM json_each(items.categories) AS c "
                "WHERE c.value = :wanted)").bindparams(wanted=category)


def _json_list(value: str) -> str:
    import json

    return json.dumps([value])


def list_items(session: Session, limit: int, now: datetime, active: bool | None = None,
               category: str | None = None, cursor: str | None = None
               ) -> tuple[list[Item], str | None]:
    """Items by item_id after `cursor`; `active`: only those available now (true) or only
    those that are not (false); `category`: only items filed under it. A cursor the API did
    not return raises InvalidCursor (a 422 naming `cursor`) before any query."""
    query = select(Item).order_by(Item.item_id).limit(limit + 1)
    if cursor is not None:
        query = query.where(Item.item_id > cursors.decode_id(cursors.ITEMS, cursor))
    if active is not None:
        clause = available_clause(now)
        query = query.where(clause if active else not_(clause))
    if category is not None:
        query = query.where(_has_category(session, category))
    rows = list(session.scalars(query))
    page, more = rows[:limit], len(rows) > limit
    return page, (cursors.encode_id(cursors.ITEMS, page[-1].item_id) if more else None)


def count_items(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Item)) or 0)
