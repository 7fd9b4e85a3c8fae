"""Load MovieLens-100k into the store through the service's own ingestion code."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from app.core.config import Settings
from app.schemas.events import EventIn
from app.schemas.items import ItemIn
from app.services import ingestion
from app.store import repository
from app.store.models import Event
from training.data.movielens import MovieLens, Rating

BATCH_SIZE = 1_000


@dataclass(frozen=True, slots=True)
class ImportReport:
    items: int
    accepted: int
    duplicates: int
    skipped: bool = False


def movielens_event_id(rating: Rating) -> str:
    # ml-100k has one rating per (user, item): a stable id makes the import idempotent.
    return f"ml-100k:{rating.user_id}:{rating.item_id}"


def item_batch(dataset: MovieLens) -> list[ItemIn]:
    return [ItemIn(item_id=m.item_id, title=m.title, text=m.text, categories=list(m.categories),
                   attributes={"year": m.year} if m.year else {})
            for m in dataset.movies]


def event_batches(ratings: Sequence[Rating], size: int = BATCH_SIZE) -> Iterator[list[EventIn]]:
    for start in range(0, len(ratings), size):
        yield [EventIn(event_id=movielens_event_id(r), user_id=r.user_id, item_id=r.item_id,
                       type="rate", value=r.rating,
                       timestamp=datetime.fromtimestamp(r.timestamp, tz=UTC))
               for r in ratings[start:start + size]]


def import_movielens(dataset: MovieLens, factory: sessionmaker[Session], settings: Settings,
                     if_empty: bool = False, progress: bool = True) -> ImportReport:
    """Upsert the movies, then the ratings in file order (their ingestion order breaks ties)."""
    if if_empty:
        with factory() as session:
            if repository.count_rows(session, Event) > 0:
                return ImportReport(items=0, accepted=0, duplicates=0, skipped=True)
    with factory() as session, session.begin():
        items = ingestion.upsert_items(session, item_batch(dataset), settings)
    accepted = duplicates = 0
    with tqdm(total=len(dataset.ratings), unit="event", desc="import ml-100k",
              disable=not progress) as bar:
        for batch in event_batches(dataset.ratings):
            with factory() as session, session.begin():
                result = ingestion.ingest_events(session, batch, settings)
            accepted += result.accepted
            duplicates += result.duplicates
            bar.update(len(batch))
    return ImportReport(items=items, accepted=accepted, duplicates=duplicates)
