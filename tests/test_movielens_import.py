"""The ml-100k fetch is verified, and the import is complete and idempotent."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.core.config import VAR_DIR, Settings
from app.store import repository
from app.store.db import make_engine, make_session_factory
from app.store.models import Event, Item, User
from training.data import movielens
from training.data.importer import import_movielens
from training.data.store import read_snapshot
from training.recommender import prepare_split


@pytest.fixture(scope="session")
def ml100k() -> movielens.MovieLens:
    return movielens.load(VAR_DIR / "cache")


def test_dataset_is_complete(ml100k: movielens.MovieLens) -> None:
    assert len(ml100k.movies) == 1682 and len(ml100k.ratings) == 100_000
    assert len({r.user_id for r in ml100k.ratings}) == 943
    toy_story = ml100k.movies[0]
    assert toy_story.title == "Toy Story" and toy_story.year == 1995
    assert toy_story.genres == ("Animation", "Children's", "Comedy")
    assert "Toy Story (1995)" in toy_story.text and "Animation" in toy_story.text


def test_tampered_files_are_refused(ml100k: movielens.MovieLens, tmp_path: Path) -> None:
    wheel = next((VAR_DIR / "cache").glob("recbole-1.2.1-*.whl"))
    shutil.copy(wheel, tmp_path / wheel.name)
    movielens.fetch(tmp_path)  # extracts and verifies from the cached wheel
    (tmp_path / "ml-100k" / "ml-100k.inter").write_text("user_id:token\n")
    assert movielens.fetch(tmp_path)  # a bad copy is replaced from the wheel
    wheel_copy = tmp_path / wheel.name
    wheel_copy.write_bytes(b"not a wheel")
    (tmp_path / "ml-100k" / "ml-100k.inter").write_text("user_id:token\n")
    with pytest.raises(Exception, match=r"(?i)zip|sha-256"):
        movielens.fetch(tmp_path)


def test_import_is_complete_and_idempotent(ml100k: movielens.MovieLens, pg_database: str,
                                           tmp_path: Path) -> None:
    settings = Settings(database_url=pg_database, data_cache_dir=tmp_path)
    engine = make_engine(pg_database)
    factory = make_session_factory(engine)
    with factory() as session, session.begin():
        for model in (Event, User, Item):
            session.execute(model.__table__.delete())
    first = import_movielens(ml100k, factory, settings, progress=False)
    assert (first.items, first.accepted, first.duplicates) == (1682, 100_000, 0)
    again = import_movielens(ml100k, factory, settings, progress=False)
    assert (again.accepted, again.duplicates) == (0, 100_000)
    assert import_movielens(ml100k, factory, settings, if_empty=True, progress=False).skipped
    with factory() as session:
        assert repository.count_rows(session, Event) == 100_000
        assert repository.count_rows(session, User) == 943
        assert session.scalar(select(func.count(func.distinct(Event.item_id)))) == 1682
        newest = repository.user_events_page(session, "196", limit=1)[0]
    last = max((r for r in ml100k.ratings if r.user_id == "196"), key=lambda r: r.timestamp)
    assert newest.occurred_at.timestamp() == last.timestamp

    # Training from this store sees exactly what training from the files saw, for every user:
    # the same users in the same order, histories, ties (file order = ingestion order) and
    # targets, so the ml-100k quality figures cannot move.
    snapshot = read_snapshot(engine)
    assert snapshot.fingerprint == read_snapshot(engine).fingerprint
    _, stored = prepare_split(snapshot, None)
    # what training read from the files before: each user's ratings stably sorted by time,
    # users in order of first appearance, items indexed in the movies file's order
    index = {m.item_id: i + 1 for i, m in enumerate(ml100k.movies)}
    by_user: dict[str, list[tuple[int, int]]] = {}
    for r in ml100k.ratings:
        by_user.setdefault(r.user_id, []).append((r.timestamp, index[r.item_id]))
    expected = {u: [i for _, i in sorted(e, key=lambda x: x[0])] for u, e in by_user.items()}
    assert len(stored.train) == 943
    assert [s.user_id for s in stored.train] == list(by_user)
    for seq, valid, test in zip(stored.train, stored.valid_items, stored.test_items,
                                strict=True):
        assert [*seq.items.tolist(), valid, test] == expected[seq.user_id]
    engine.dispose()
