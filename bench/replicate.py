"""MovieLens-1M users replicated with id offsets: event files of any multiple of ML-1M's size.

Copy ``k`` (0-based) of every rating names user ``user_id + k * offset`` (offset 10,000 > the
largest ML-1M user id, 6,040), the same item, rating and timestamp: copy 0 is ML-1M itself.
Rows are written copy after copy, each copy in ``ratings.dat`` order, so each user's events
keep the file order that breaks ties between equal timestamps (their ingestion order). The
source file is re-read once per copy and rows go out in chunks: memory does not grow with
the number of copies.

Files follow the generic importer's contract (``training/data/files.py``):

- events (CSV or Parquet): ``user_id, item_id, timestamp`` (epoch seconds), ``type``
  (``rate``), ``value`` (the rating); no ``event_id``, so the importer derives one from the
  content, as for a team's own file without ids;
- items (CSV): ``item_id, title, categories`` (``|``-separated), ``attributes`` (JSON,
  ``{"year": ...}``), as ``training.data.importer.movie_item`` stores them.

    python -m bench.replicate --copies 5 --out var/scale/x5      # 5,001,045 events
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from training.data.movielens import Movie, Rating

USER_OFFSET = 10_000  # copy k of user u is user u + k * USER_OFFSET
EVENT_COLUMNS = ("user_id", "item_id", "timestamp", "type", "value")
ITEM_COLUMNS = ("item_id", "title", "categories", "attributes")
EVENT_TYPE = "rate"
CHUNK = 50_000  # rows per write (CSV writerows, one Parquet record batch)


def replicated(ratings: Callable[[], Iterable[Rating]], copies: int,
               offset: int = USER_OFFSET) -> Iterator[Rating]:
    """``copies`` copies of the ratings ``ratings()`` yields (called once per copy), user ids
    shifted by ``copy * offset``; copy after copy, each in source order."""
    if copies < 1:
        raise ValueError(f"copies must be at least 1, got {copies}")
    for copy in range(copies):
        shift = copy * offset
        for rating in ratings():
            user = int(rating.user_id)
            if user >= offset:
                raise ValueError(f"user id {user} is not below the offset {offset}: copies "
                                 "would collide")
            yield Rating(str(user + shift), rating.item_id, rating.rating, rating.timestamp)


def event_record(rating: Rating) -> tuple[str, str, int, str, str]:
    value = f"{rating.rating:g}"  # 4.0 -> "4"
    return rating.user_id, rating.item_id, rating.timestamp, EVENT_TYPE, value


def item_record(movie: Movie) -> tuple[str, str, str, str]:
    attributes = {"year": movie.year} if movie.year else {}
    return movie.item_id, movie.title, "|".join(movie.categories), json.dumps(attributes)


def _chunks(rows: Iterable[tuple[object, ...]], size: int) -> Iterator[list[tuple[object, ...]]]:
    iterator = iter(rows)
    while chunk := list(islice(iterator, size)):
        yield chunk


def write_items_csv(movies: Sequence[Movie], path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(ITEM_COLUMNS)
        writer.writerows(item_record(m) for m in movies)
    return len(movies)


def write_events(ratings: Iterable[Rating], path: Path) -> int:
    """Events to ``path`` (CSV, or Parquet for ``.parquet``), streamed; returns the row count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = (event_record(r) for r in ratings)
    if path.suffix == ".parquet":
        return _write_parquet(rows, path)
    count = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(EVENT_COLUMNS)
        for chunk in _chunks(rows, CHUNK):
            writer.writerows(chunk)
            count += len(chunk)
    return count


def _write_parquet(rows: Iterable[tuple[object, ...]], path: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("user_id", pa.string()), ("item_id", pa.string()),
                        ("timestamp", pa.int64()), ("type", pa.string()),
                        ("value", pa.float64())])  # a number: the importer takes no text here
    count = 0
    with pq.ParquetWriter(path, schema) as writer:
        for chunk in _chunks(rows, CHUNK):
            columns = list(zip(*chunk, strict=True))
            columns[4] = tuple(float(v) for v in columns[4])
            writer.write_batch(pa.record_batch([pa.array(c) for c in columns], schema=schema))
            count += len(chunk)
    return count


@dataclass(frozen=True)
class Generated:
    copies: int
    items_path: Path
    events_path: Path
    items: int
    events: int
    users: int
    seconds: float

    def as_dict(self) -> dict[str, object]:
        return {"copies": self.copies, "items_file": str(self.items_path),
                "events_file": str(self.events_path), "items": self.items,
                "events": self.events, "users": self.users,
                "events_file_mib": round(self.events_path.stat().st_size / 2**20, 1),
                "seconds": round(self.seconds, 1)}


def generate(copies: int, out: Path, cache_dir: Path, fmt: str = "csv") -> Generated:
    """ML-1M (fetched and checked by ``training.data.movielens1m``) replicated ``copies``
    times into ``out/items.csv`` and ``out/events.<fmt>``."""
    from training.data import movielens1m

    started = time.perf_counter()
    dataset = movielens1m.load(cache_dir)
    movies = dataset.movies()
    items = write_items_csv(movies, out / "items.csv")
    events_path = out / f"events.{fmt}"
    users: set[str] = set()  # of the source (6,040 ids): each copy adds as many

    def source() -> Iterator[Rating]:
        for rating in dataset.ratings():
            users.add(rating.user_id)
            yield rating

    events = write_events(replicated(source, copies), events_path)
    return Generated(copies, out / "items.csv", events_path, items, events,
                     copies * len(users), time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> None:
    from app.core.config import get_settings

    parser = argparse.ArgumentParser(prog="python -m bench.replicate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for the two files")
    parser.add_argument("--format", choices=["csv", "parquet"], default="csv")
    args = parser.parse_args(argv)
    result = generate(args.copies, args.out, get_settings().data_cache_dir, args.format)
    print(json.dumps(result.as_dict(), indent=1))


if __name__ == "__main__":
    main()
