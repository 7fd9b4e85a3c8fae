"""The store as the training source: the snapshot reader (both backends), its fingerprint,
``--until``, and the guard that training on an imported store sees exactly what training on
the files saw (same users, same order, same ties)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.schemas.events import EventIn
from app.schemas.items import ItemIn
from app.services import ingestion
from app.store.db import make_engine, make_session_factory
from tests.conftest import tiny_users_data
from training.data.importer import import_movielens
from training.data.sequences import build_user_sequences
from training.data.store import read_snapshot
from training.recommender import prepare_split


@pytest.fixture
def store(database_url: str) -> Iterator[tuple[sessionmaker[Session], Settings]]:
    engine = make_engine(database_url)
    yield make_session_factory(engine), Settings(database_url=database_url)
    engine.dispose()


def _events(factory: sessionmaker[Session], settings: Settings, rows: list[dict]) -> None:
    with factory() as session, session.begin():
        ingestion.ingest_events(session, [EventIn(**row) for row in rows], settings)


def _items(factory: sessionmaker[Session], settings: Settings, ids: list[str],
           categories: list[str] | None = None) -> None:
    with factory() as session, session.begin():
        ingestion.upsert_items(session, [ItemIn(item_id=i, title=f"Item {i}",
                                                categories=categories or []) for i in ids],
                               settings)


def test_snapshot_orders_by_time_then_ingestion_and_keeps_text_only_items(
        store: tuple[sessionmaker[Session], Settings]) -> None:
    factory, settings = store
    _items(factory, settings, ["10", "9", "b", "a", "lonely"], ["x"])
    t0 = "2024-05-01T10:00:00Z"
    _events(factory, settings, [
        {"user_id": "late", "item_id": "a", "timestamp": "2024-05-02T00:00:00Z", "type": "buy"},
        {"user_id": "u", "item_id": "b", "timestamp": t0, "type": "view"},
        {"user_id": "u", "item_id": "9", "timestamp": "2024-04-30T00:00:00Z", "type": "view",
         "value": 2.0},
        {"user_id": "u", "item_id": "10", "timestamp": t0, "type": "never_seen_before"},
        {"user_id": "late", "item_id": "b", "timestamp": t0, "type": "buy"}])
    engine = factory.kw["bind"]
    snapshot = read_snapshot(engine)
    assert snapshot.item_ids == ["9", "10", "a", "b", "lonely"]  # natural order, all items
    assert snapshot.items[4].text == "Item lonely" and snapshot.items[4].categories == ("x",)
    assert snapshot.user_ids == ["late", "u"]  # by first ingested event
    sequences = {s.user_id: [snapshot.item_ids[i - 1] for i in s.items]
                 for s in build_user_sequences(snapshot)}
    # time order; the two events at t0 keep their ingestion order
    assert sequences == {"u": ["9", "b", "10"], "late": ["b", "a"]}
    assert snapshot.summary()["types"] == {"buy": 2, "view": 2, "never_seen_before": 1}
    assert snapshot.n_events == 5 and snapshot.last_seq is not None
    assert np.isnan(snapshot.event_value).sum() == 4
    until = read_snapshot(engine, datetime(2024, 5, 1, 10, tzinfo=UTC))
    assert until.n_events == 4 and until.fingerprint != snapshot.fingerprint


def test_fingerprint_stays_when_nothing_changed_and_moves_when_events_are_added(
        store: tuple[sessionmaker[Session], Settings]) -> None:
    factory, settings = store
    engine = factory.kw["bind"]
    _items(factory, settings, ["a", "b"])
    row = {"user_id": "u", "item_id": "a", "timestamp": "2024-05-01T10:00:00Z", "type": "view"}
    _events(factory, settings, [row])
    first = read_snapshot(engine)
    assert read_snapshot(engine).fingerprint == first.fingerprint
    _events(factory, settings, [row])  # a duplicate is not stored: nothing changed
    _items(factory, settings, ["a", "b"])  # the same catalogue upserted again
    assert read_snapshot(engine).fingerprint == first.fingerprint
    _events(factory, settings, [{**row, "item_id": "b"}])
    grown = read_snapshot(engine)
    assert grown.fingerprint != first.fingerprint and grown.n_events == 2
    assert grown.last_seq > first.last_seq  # type: ignore[operator]


def test_training_on_the_imported_store_sees_what_training_on_the_files_saw(
        store: tuple[sessionmaker[Session], Settings]) -> None:
    """ml-100k imported in file order: same users, histories, ties and targets as the files,
    so ml-100k figures do not move when training reads the store."""
    factory, settings = store
    dataset, _, subset = tiny_users_data()
    import_movielens(subset, factory, settings, progress=False)
    from_store = read_snapshot(factory.kw["bind"])
    vocab_files, files = prepare_split(dataset.snapshot(), 40)
    vocab_store, stored = prepare_split(from_store, 40)
    assert vocab_files.item_ids == vocab_store.item_ids == [m.item_id for m in dataset.movies]
    assert [s.user_id for s in files.train] == [s.user_id for s in stored.train]
    for a, b in zip(files.train, stored.train, strict=True):
        assert np.array_equal(a.items, b.items) and np.array_equal(a.times, b.times)
    assert np.array_equal(files.valid_items, stored.valid_items)
    assert np.array_equal(files.test_items, stored.test_items)
    assert np.array_equal(files.test_times, stored.test_times)
    assert [i.categories for i in from_store.items] == [m.categories for m in dataset.movies]
    assert [i.text for i in from_store.items] == [m.text for m in dataset.movies]


def test_until_parses_iso_and_epoch_and_an_empty_store_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from app.core import config
    from app.store.migrate import upgrade_head
    from training.__main__ import main, parse_until

    assert parse_until("2024-05-01T10:00:00") == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert parse_until("2024-05-01T12:00:00+02:00") == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert parse_until("1714557600") == datetime(2024, 5, 1, 10, tzinfo=UTC)
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    upgrade_head(url)
    monkeypatch.setenv("DRIFTREC_DATABASE_URL", url)
    config.get_settings.cache_clear()
    try:
        assert main(["retrain", "--config", "configs/tiny.yaml", "--no-progress"]) == 2
    finally:
        config.get_settings.cache_clear()
    assert "the store holds no events" in capsys.readouterr().err
