"""Importers: MovieLens (100k, 1M) and a team's own files, all through the service's own
ingestion functions (``training.data.ingest``: batches, bad rows, idempotency)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.schemas.events import EventIn
from app.schemas.items import ItemIn
from app.store import repository
from app.store.models import Event
from training.data.files import FileImportError, SourceFile
from training.data.ingest import (
    BatchWriter,
    Counts,
    RejectsFile,
    SourceRow,
    event_row,
    item_row,
)
from training.data.movielens import Movie, MovieLens, Rating

BATCH_SIZE = 1_000  # events per API-sized batch (bench.ingest compares the two paths)


@dataclass(frozen=True, slots=True)
class ImportReport:
    items: int
    accepted: int
    duplicates: int
    skipped: bool = False
    counts: list[Counts] = field(default_factory=list)
    rejects: Path | None = None
    accept_conflicts: bool = False  # rows reusing an event_id with other content are no fault

    @property
    def conflicts(self) -> int:
        return sum(c.conflicts for c in self.counts)

    @property
    def ok(self) -> bool:
        """Every row stored or already stored as it is: none refused, none conflicting
        (unless conflicts were accepted)."""
        return (all(c.ok for c in self.counts)
                and (self.accept_conflicts or self.conflicts == 0))


def movielens_event_id(rating: Rating, variant: str = "ml-100k") -> str:
    # MovieLens has one rating per (user, item): a stable id makes the import idempotent.
    return f"{variant}:{rating.user_id}:{rating.item_id}"


def movie_item(movie: Movie) -> ItemIn:
    return ItemIn(item_id=movie.item_id, title=movie.title, text=movie.text,
                  categories=list(movie.categories),
                  attributes={"year": movie.year} if movie.year else {})


def item_batch(dataset: MovieLens) -> list[ItemIn]:
    return [movie_item(m) for m in dataset.movies]


def rating_event(rating: Rating, variant: str) -> EventIn:
    return EventIn(event_id=movielens_event_id(rating, variant), user_id=rating.user_id,
                   item_id=rating.item_id, type="rate", value=rating.rating,
                   timestamp=datetime.fromtimestamp(rating.timestamp, tz=UTC))


def event_batches(ratings: Sequence[Rating], size: int = BATCH_SIZE) -> Iterator[list[EventIn]]:
    for start in range(0, len(ratings), size):
        yield [rating_event(r, "ml-100k") for r in ratings[start:start + size]]


def _store_has_events(factory: sessionmaker[Session]) -> bool:
    with factory() as session:
        return repository.count_rows(session, Event) > 0


def import_movies(movies: Sequence[Movie], ratings: Iterable[Rating], variant: str,
                  factory: sessionmaker[Session], settings: Settings, total: int | None = None,
                  if_empty: bool = False, progress: bool = True) -> ImportReport:
    """Upsert the movies, then stream the ratings in file order (their ingestion order breaks
    ties between equal timestamps)."""
    if if_empty and _store_has_events(factory):
        return ImportReport(items=0, accepted=0, duplicates=0, skipped=True)
    writer = BatchWriter(factory, settings, progress=progress)
    items = writer.write_items((item_row("movies", i, movie_item(m))
                                for i, m in enumerate(movies, start=1)), len(movies),
                               f"{variant} movies")
    events = writer.write_events((event_row("ratings", i, rating_event(r, variant))
                                  for i, r in enumerate(ratings, start=1)), total,
                                 f"{variant} ratings")
    return ImportReport(items=items.written, accepted=events.written,
                        duplicates=events.duplicates, counts=[items, events])


def import_movielens(dataset: MovieLens, factory: sessionmaker[Session], settings: Settings,
                     if_empty: bool = False, progress: bool = True) -> ImportReport:
    """ml-100k (parsed files) into the store."""
    return import_movies(dataset.movies, dataset.ratings, "ml-100k", factory, settings,
                         len(dataset.ratings), if_empty, progress)


def import_files(items: Path | None, events: Path | None, factory: sessionmaker[Session],
                 settings: Settings, mapping: dict[str, str] | None = None,
                 skip_bad: bool = False, rejects: Path | None = None, progress: bool = True,
                 batch_size: int | None = None,
                 err: Callable[[str], None] | None = None,
                 accept_conflicts: bool = False) -> ImportReport:
    """A team's catalogue and/or events (CSV, JSON Lines or Parquet) into the store: items
    first, so events may name items of the same run. Raises FileImportError for a file that
    cannot be read at all; bad rows are counted, reported and (skip_bad) written to
    ``rejects``. Rows reusing an ``event_id`` with other content are not stored (the stored
    event, or the file's first row with that id, is kept), reported as the API reports
    ``conflicts`` and counted: the report is not ``ok`` unless ``accept_conflicts``."""
    err = err or (lambda text: print(text, file=sys.stderr))
    if items is None and events is None:
        raise FileImportError("give --items FILE, --events FILE or both")
    sources = [SourceFile(path, kind, mapping or {}) for path, kind in
               ((items, "items"), (events, "events")) if path is not None]
    for source in sources:
        source.format  # noqa: B018 -- unknown extensions fail before anything is written
        if not source.path.is_file():
            raise FileImportError(f"{source.path}: no such file")
    rejects_file = RejectsFile(rejects) if rejects is not None else None
    options = {"batch_size": batch_size} if batch_size else {}
    writer = BatchWriter(factory, settings, skip_bad=skip_bad, rejects=rejects_file,
                         progress=progress, err=err, **options)
    counts: list[Counts] = []
    try:
        for source in sources:
            rows: Iterable[SourceRow] = source.rows(warn=err)
            write = writer.write_items if source.kind == "items" else writer.write_events
            result = write(rows, source.count(), source.path.name)
            counts.append(result)
            if result.unknown_items:
                shown = sorted(result.unknown_items)
                more = f" and {len(shown) - 10} more" if len(shown) > 10 else ""
                err(f"{source.path.name}: events name {len(shown)} item(s) the store does not "
                    f"have: {', '.join(shown[:10])}{more}; import them first (--items FILE, "
                    "in the same run or before)")
            if not result.ok and not skip_bad:
                break  # events would name items that were refused
    finally:
        if rejects_file is not None:
            rejects_file.close()
    by_kind = {c.kind: c for c in counts}
    item_counts, event_counts = by_kind.get("items", Counts("items")), by_kind.get(
        "events", Counts("events"))
    return ImportReport(items=item_counts.written, accepted=event_counts.written,
                        duplicates=event_counts.duplicates, counts=counts,
                        rejects=rejects if rejects_file and rejects_file.count else None,
                        accept_conflicts=accept_conflicts)
