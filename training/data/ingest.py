"""One path into the store for every importer: rows -> the service's ingestion functions.

Importers (a team's own files, MovieLens) turn their source into :class:`SourceRow` records
holding an ``ItemIn`` / ``EventIn`` (validated by the same schema as the API) or the field
errors that stopped it. :class:`BatchWriter` sends them in batches to
``app.services.ingestion.upsert_items`` / ``ingest_events``, one transaction per batch, in
source order (so ``seq``, the tie-break between equal timestamps, follows the file order).

Bad rows: each is reported with its file and line and the API's field message. A batch with
a bad row writes nothing and the import stops there; with ``skip_bad`` the bad rows are left
out, written to a rejects file (JSON Lines), and the import goes on. Re-running an import adds
nothing: items are upserted, and events keep their ``event_id`` (or one derived from their
content by the ingestion code).
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from app.core.config import Settings
from app.schemas.events import EventIn
from app.schemas.items import ItemIn
from app.services import ingestion
from app.store import repository
from app.store.models import Item

BATCH_SIZE = 5_000  # rows per transaction (the API's limit is settings.max_batch_events)
MAX_PRINTED = 20  # bad rows printed in full; the rest are counted (and in the rejects file)


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str
    code: str = "invalid"

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message, "type": self.code}


@dataclass
class SourceRow:
    """One row of a source file: where it came from, what it said, what it became."""

    source: str  # file name, for messages
    line: int  # line number (CSV, JSON Lines) or row number (Parquet), 1-based
    raw: Any  # the row as read (for the rejects file)
    model: BaseModel | None = None
    errors: list[FieldError] = field(default_factory=list)

    def where(self) -> str:
        return f"{self.source}:{self.line}"


def validation_errors(error: ValidationError) -> list[FieldError]:
    """Pydantic's errors as the API words them (app.core.errors): field and message."""
    found = []
    for item in error.errors():
        names = [str(p) for p in item.get("loc", ()) if not isinstance(p, int)]
        message = str(item.get("msg", "")).removeprefix("Value error, ")
        found.append(FieldError(names[-1] if names else "row", message,
                                str(item.get("type", "invalid"))))
    return found


def validated(row: SourceRow, schema: type[BaseModel], values: dict[str, Any]) -> SourceRow:
    """Validate ``values`` with the API schema; the model or the field errors go on the row."""
    try:
        row.model = schema.model_validate(values)
    except ValidationError as error:
        row.errors.extend(validation_errors(error))
    return row


@dataclass
class Counts:
    kind: str  # "items" or "events"
    rows: int = 0
    written: int = 0  # items upserted / events stored
    duplicates: int = 0  # events already stored (re-runs), the same content
    conflicts: int = 0  # events reusing a stored (or earlier) event_id with other content
    refused: int = 0
    new_items: int = 0
    seconds: float = 0.0
    stopped_at: str | None = None  # where an import without skip_bad stopped
    unknown_items: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return self.refused == 0

    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        if self.kind == "items":
            text = (f"items: {self.rows} rows read, {self.written} upserted "
                    f"({self.new_items} new)")
        else:
            text = (f"events: {self.rows} rows read, {self.written} stored, "
                    f"{self.duplicates} already stored")
            if self.conflicts:
                text += (f", {self.conflicts} conflicting (an event_id already taken by "
                         "other content; not stored)")
        text += f", {self.refused} refused in {self.seconds:.1f} s ({self.rate():,.0f} rows/s)"
        if self.stopped_at:
            text += f"; stopped at {self.stopped_at}: that batch wrote nothing"
        return text


class RejectsFile:
    """Refused rows as JSON Lines: {"file", "line", "errors": [...], "row": ...}."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: TextIO | None = None
        self.count = 0

    def write(self, row: SourceRow) -> None:
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("w", encoding="utf-8")
        record = {"file": row.source, "line": row.line,
                  "errors": [e.as_dict() for e in row.errors], "row": row.raw}
        self._handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self.count += 1

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


class ImportStopped(Exception):
    """A batch had bad rows and skip_bad is off: nothing more is written."""


class BatchWriter:
    """Writes validated rows in batches through the ingestion functions."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings,
                 skip_bad: bool = False, rejects: RejectsFile | None = None,
                 progress: bool = True, batch_size: int = BATCH_SIZE,
                 err: Callable[[str], None] | None = None) -> None:
        self.factory = factory
        self.settings = settings
        self.skip_bad = skip_bad
        self.rejects = rejects
        self.progress = progress
        self.err = err or (lambda text: print(text, file=sys.stderr))
        self.printed = 0
        self.limits = {"items": min(batch_size, settings.max_batch_items),
                       "events": min(batch_size, settings.max_batch_events)}

    # ------------------------------------------------------------------ public
    def write_items(self, rows: Iterable[SourceRow], total: int | None = None,
                    label: str = "items") -> Counts:
        with self.factory() as session:
            before = repository.count_rows(session, Item)
        counts = self._write("items", rows, total, label)
        with self.factory() as session:
            counts.new_items = repository.count_rows(session, Item) - before
        return counts

    def write_events(self, rows: Iterable[SourceRow], total: int | None = None,
                     label: str = "events") -> Counts:
        return self._write("events", rows, total, label)

    # ---------------------------------------------------------------- batching
    def _write(self, kind: str, rows: Iterable[SourceRow], total: int | None,
               label: str) -> Counts:
        """Read and validate batches here while one writer thread stores the previous ones
        (in order): parsing overlaps the database's work. Bounded: two batches in flight."""
        counts = Counts(kind)
        started = time.perf_counter()
        work: queue.Queue[list[SourceRow] | None] = queue.Queue(maxsize=2)
        stopped = threading.Event()
        failures: list[BaseException] = []

        with tqdm(total=total, unit=kind[:-1], desc=f"import {label}", unit_scale=True,
                  disable=not self.progress, file=sys.stderr) as bar:

            def writer() -> None:
                while (batch := work.get()) is not None:
                    if stopped.is_set():
                        continue  # drain: nothing after a refused batch is written
                    try:
                        self._flush(kind, batch, counts)
                        bar.update(len(batch))
                    except ImportStopped:
                        stopped.set()
                    except BaseException as error:  # re-raised in the caller's thread
                        failures.append(error)
                        stopped.set()

            thread = threading.Thread(target=writer, name=f"import-{kind}", daemon=True)
            thread.start()
            try:
                for batch in _batches(rows, self.limits[kind]):
                    if stopped.is_set():
                        break
                    counts.rows += len(batch)
                    work.put(batch)
            finally:
                work.put(None)
                thread.join()
        if failures:
            raise failures[0]
        counts.seconds = time.perf_counter() - started
        return counts

    def _flush(self, kind: str, batch: list[SourceRow], counts: Counts) -> None:
        good = [row for row in batch if not row.errors]
        if len(good) < len(batch):
            self._refuse(kind, [row for row in batch if row.errors], batch, counts)
        while good:
            conflicts: list[ingestion.Conflict] = []
            try:
                with self.factory() as session, session.begin():
                    models = [row.model for row in good]
                    if kind == "items":
                        counts.written += ingestion.upsert_items(
                            session, models, self.settings)  # type: ignore[arg-type]
                    else:
                        result = ingestion.ingest_events(
                            session, models, self.settings)  # type: ignore[arg-type]
                        counts.written += result.accepted
                        counts.duplicates += result.duplicates - len(result.conflicts)
                        conflicts = result.conflicts
                counts.conflicts += len(conflicts)
                self._report_conflicts([(good[c.row], c.event_id) for c in conflicts])
                return
            except ingestion.BatchRejected as rejected:
                bad_rows = {error.row for error in rejected.errors}
                for error in rejected.errors:
                    row = good[error.row]
                    row.errors.append(FieldError(error.field, error.message, error.code))
                    if error.code == "unknown_item" and isinstance(row.model, EventIn):
                        counts.unknown_items.add(row.model.item_id)
                self._refuse(kind, [good[i] for i in sorted(bad_rows)], batch, counts)
                good = [row for i, row in enumerate(good) if i not in bad_rows]

    def _refuse(self, kind: str, bad: list[SourceRow], batch: list[SourceRow],
                counts: Counts) -> None:
        """Report bad rows; without skip_bad the whole batch is refused and the import ends."""
        counts.refused += len(bad)
        for row in bad:
            self._report(row)
            if self.rejects is not None:
                self.rejects.write(row)
        if not self.skip_bad:
            counts.stopped_at = f"{batch[0].where()}-{batch[-1].line}"
            raise ImportStopped

    def _report_conflicts(self, rows: list[tuple[SourceRow, str]]) -> None:
        """Rows the store kept out as the API does (its ``conflicts``): their event_id names
        an event already stored, or stored by an earlier row, with other content. Reported
        and written to the rejects file like refused rows; the batch's other rows stay."""
        for row, event_id in rows:
            row.errors.append(FieldError(
                "event_id", f"event_id {event_id!r} is already taken by an event with other "
                "content (stored, or earlier in the file); this row was not stored",
                "event_id_conflict"))
            self._report(row)
            if self.rejects is not None:
                self.rejects.write(row)

    def _report(self, row: SourceRow) -> None:
        if self.printed < MAX_PRINTED:
            for error in row.errors:
                self.err(f"{row.where()}: {error.field}: {error.message}")
        elif self.printed == MAX_PRINTED:
            self.err("... more bad rows (see the rejects file)" if self.rejects
                     else "... more bad rows")
        self.printed += 1


def _batches(rows: Iterable[SourceRow], size: int) -> Iterator[list[SourceRow]]:
    batch: list[SourceRow] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def item_row(source: str, line: int, item: ItemIn) -> SourceRow:
    """A row of an importer that builds its models itself (MovieLens)."""
    return SourceRow(source, line, None, item)


def event_row(source: str, line: int, event: EventIn) -> SourceRow:
    return SourceRow(source, line, None, event)
