"""The training source: a snapshot of the service's store (items and events) as compact arrays.

``read_snapshot`` streams the ``items`` and ``events`` tables (``yield_per``: a server-side
cursor on PostgreSQL) into numpy arrays, in the order serving reads histories: event time,
then ``seq`` (ingestion order) for events sharing a timestamp. A store of a million events
never holds a million Python objects at once: rows arrive in chunks and are turned into
integer codes straight away.

What the model uses of an event: every stored event is one interaction with its item,
whatever its ``type`` (types the model never saw are interactions too); ``value`` (e.g. a
rating) and ``text`` are kept in the snapshot but the sequence model ignores them: a 1-star
rating still says the user watched the film.

Catalogue order (the model's item indices): item ids in natural order (numeric ids by
number, then the rest as strings), so a catalogue of ids 1..N keeps its order. Every stored
item is in the vocabulary, including items nobody has an event on: the model scores those by
their text alone. User order: by each user's first ingested event.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from app.ml.catalogue import item_text
from app.store.models import Event, Item

CHUNK_ROWS = 20_000


@dataclass(frozen=True)
class SnapshotItem:
    item_id: str
    title: str
    text: str  # what the encoder reads (the stored text, or the title: app.ml.catalogue)
    categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class InteractionSnapshot:
    """Items and events of a store at one moment. Event arrays are aligned, one entry per
    event, sorted by (time, seq); codes index ``items`` and ``user_ids``."""

    items: list[SnapshotItem]  # vocabulary order: items[i] is model index i + 1
    user_ids: list[str]  # in order of each user's first ingested event
    event_user: np.ndarray  # int32 [E] index into user_ids
    event_item: np.ndarray  # int32 [E] index into items (0-based)
    event_time: np.ndarray  # float64 [E] epoch seconds
    event_value: np.ndarray  # float32 [E], NaN where the event has no value
    event_type: np.ndarray  # int16 [E] index into types
    event_seq: np.ndarray  # int64 [E] ingestion order
    types: list[str] = field(default_factory=list)
    last_seq: int | None = None
    until: datetime | None = None
    fingerprint: str = ""

    @property
    def n_events(self) -> int:
        return len(self.event_item)

    @property
    def item_ids(self) -> list[str]:
        return [item.item_id for item in self.items]

    def summary(self) -> dict[str, Any]:
        """What the fingerprint describes (recorded with the model version)."""
        return {"items": len(self.items), "users": len(self.user_ids), "events": self.n_events,
                "last_seq": self.last_seq,
                "until": self.until.isoformat() if self.until else None,
                "types": dict(zip(self.types, np.bincount(self.event_type, minlength=len(
                    self.types)).tolist(), strict=True))}


def natural_key(item_id: str) -> tuple[int, int, str]:
    """Numeric ids by number first, then the others as strings."""
    return (0, int(item_id), "") if item_id.isdigit() else (1, 0, item_id)


class _Digest:
    """The fingerprint: sha256 over the catalogue's content and the events' ids, in order."""

    def __init__(self) -> None:
        self.items = hashlib.sha256()
        self.events = hashlib.sha256()

    def item(self, item: SnapshotItem) -> None:
        self.items.update(json.dumps([item.item_id, item.title, item.text,
                                      list(item.categories)], ensure_ascii=False).encode())
        self.items.update(b"\n")

    def event(self, event_id: str) -> None:
        self.events.update(event_id.encode())
        self.events.update(b"\n")

    def finish(self, header: dict[str, Any]) -> str:
        text = json.dumps({**header, "items_sha256": self.items.hexdigest(),
                           "events_sha256": self.events.hexdigest()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


class _Builder:
    """Accumulates events chunk by chunk into arrays (codes, not Python objects)."""

    def __init__(self, items: list[SnapshotItem]) -> None:
        self.items = items
        self.item_index = {item.item_id: i for i, item in enumerate(items)}
        self.user_index: dict[str, int] = {}
        self.user_first_seq: list[int] = []
        self.type_index: dict[str, int] = {}
        self.chunks: list[tuple[np.ndarray, ...]] = []
        self.digest = _Digest()
        for item in items:
            self.digest.item(item)

    def add(self, rows: Sequence[tuple[int, str, str, str, str, float, float | None]]) -> None:
        """rows: (seq, event_id, user_id, item_id, type, epoch seconds, value), in order."""
        n = len(rows)
        users = np.empty(n, np.int32)
        items = np.empty(n, np.int32)
        times = np.empty(n, np.float64)
        values = np.empty(n, np.float32)
        types = np.empty(n, np.int16)
        seqs = np.empty(n, np.int64)
        for i, (seq, event_id, user_id, item_id, kind, at, value) in enumerate(rows):
            code = self.user_index.get(user_id)
            if code is None:
                code = self.user_index[user_id] = len(self.user_index)
                self.user_first_seq.append(seq)
            elif seq < self.user_first_seq[code]:
                self.user_first_seq[code] = seq
            users[i] = code
            try:
                items[i] = self.item_index[item_id]
            except KeyError:
                raise ValueError(f"event {event_id} names item {item_id!r}, which is not in "
                                 "the catalogue") from None
            times[i] = at
            values[i] = math.nan if value is None else value
            types[i] = self.type_index.setdefault(kind, len(self.type_index))
            seqs[i] = seq
            self.digest.event(event_id)
        self.chunks.append((users, items, times, values, types, seqs))

    def finish(self, until: datetime | None, extra: dict[str, Any] | None = None
               ) -> InteractionSnapshot:
        def column(k: int, dtype: Any) -> np.ndarray:
            return (np.concatenate([chunk[k] for chunk in self.chunks]) if self.chunks
                    else np.zeros(0, dtype))

        users = column(0, np.int32)
        # Users in order of their first ingested event (for a file imported in order: the
        # order users first appear in the file).
        by_first = np.argsort(np.asarray(self.user_first_seq, np.int64), kind="stable")
        renumber = np.empty(len(by_first), np.int32)
        renumber[by_first] = np.arange(len(by_first), dtype=np.int32)
        names = list(self.user_index)
        seqs = column(5, np.int64)
        last_seq = int(seqs.max()) if len(seqs) else None
        header = {"items": len(self.items), "users": len(names), "events": len(seqs),
                  "last_seq": last_seq, **(extra or {})}
        return InteractionSnapshot(
            items=self.items, user_ids=[names[i] for i in by_first],
            event_user=renumber[users] if len(users) else users,
            event_item=column(1, np.int32), event_time=column(2, np.float64),
            event_value=column(3, np.float32), event_type=column(4, np.int16), event_seq=seqs,
            types=list(self.type_index), last_seq=last_seq, until=until,
            fingerprint=self.digest.finish(header))


def _epoch(value: datetime) -> float:
    return value.timestamp()


def read_items(session: Session) -> list[SnapshotItem]:
    query = select(Item.item_id, Item.title, Item.text, Item.categories)
    items = [SnapshotItem(item_id, title, item_text(title, text), tuple(categories or ()))
             for item_id, title, text, categories in
             session.execute(query.execution_options(yield_per=CHUNK_ROWS))]
    return sorted(items, key=lambda item: natural_key(item.item_id))


def read_snapshot(engine: Engine, until: datetime | None = None) -> InteractionSnapshot:
    """Stream the store into an :class:`InteractionSnapshot` (events up to ``until``,
    inclusive, when given). Reads in one transaction, so items and events agree."""
    with Session(engine) as session, session.begin():
        if engine.dialect.name == "postgresql":
            # One consistent view of both tables while the service keeps writing.
            session.connection().exec_driver_sql(
                "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        builder = _Builder(read_items(session))
        query = select(Event.seq, Event.event_id, Event.user_id, Event.item_id, Event.type,
                       Event.occurred_at, Event.value)
        if until is not None:
            query = query.where(Event.occurred_at <= until)
        query = query.order_by(Event.occurred_at, Event.seq)
        result = session.execute(query.execution_options(yield_per=CHUNK_ROWS))
        for partition in result.partitions():
            builder.add([(seq, eid, uid, iid, kind, _epoch(at), value)
                         for seq, eid, uid, iid, kind, at, value in partition])
        return builder.finish(until, {"until": until.isoformat() if until else None})


def count_events(engine: Engine) -> tuple[int, int | None]:
    """(event count, highest seq) of the store: a cheap "has anything changed" check."""
    with Session(engine) as session:
        count, last = session.execute(select(func.count(), func.max(Event.seq))).one()
        return int(count), last


def snapshot_from_records(items: Iterable[SnapshotItem],
                          events: Iterable[tuple[str, str, float, float | None, str]],
                          ) -> InteractionSnapshot:
    """A snapshot from in-memory records: events (user_id, item_id, epoch seconds, value,
    type) in ingestion order, stably sorted by time here, as the store reads them. For tests
    and for tools that have a dataset in memory; the fingerprint covers the same content."""
    ordered_items = sorted(items, key=lambda item: natural_key(item.item_id))
    rows = [(seq, f"{user}:{item}:{seq}", user, item, kind, float(at), value)
            for seq, (user, item, at, value, kind) in enumerate(events, start=1)]
    rows.sort(key=lambda row: row[5])  # stable: ties keep ingestion order
    builder = _Builder(ordered_items)
    for start in range(0, len(rows), CHUNK_ROWS):
        builder.add(rows[start:start + CHUNK_ROWS])
    return builder.finish(None)
