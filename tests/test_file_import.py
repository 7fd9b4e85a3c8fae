"""The generic importer (``python -m training.data import``): CSV, JSON Lines and Parquet files
through the service's ingestion functions, on SQLite and PostgreSQL. Good rows, every kind of
bad row, column mapping, a re-run adding nothing, events naming unknown items."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.store.db import make_engine, make_session_factory
from app.store.models import Event, Item
from training.data.__main__ import main
from training.data.files import FileImportError
from training.data.importer import import_files

ITEMS = [
    {"item_id": "b1", "title": "Blue Train", "text": "Hard bop, 1957", "categories": ["jazz"],
     "attributes": {"year": 1957}},
    {"item_id": "b2", "title": "Kind of Blue", "categories": ["jazz", "modal"]},
    {"item_id": "b3", "title": "Abbey Road", "categories": ["rock"]},
]
EVENTS = [
    {"user_id": "ann", "item_id": "b1", "timestamp": "2024-05-01T10:00:00Z", "type": "play"},
    {"user_id": "ann", "item_id": "b2", "timestamp": 1714557600, "value": 4.5},
    {"user_id": "bob", "item_id": "b3", "timestamp": "2024-05-01T10:00:00", "text": "great",
     "event_id": "bob-1"},
    {"user_id": "bob", "item_id": "b1", "timestamp": "2024-05-01T10:00:00Z"},
]


@pytest.fixture
def store(database_url: str) -> Iterator[tuple[sessionmaker[Session], Settings]]:
    engine = make_engine(database_url)
    yield make_session_factory(engine), Settings(database_url=database_url)
    engine.dispose()


def _csv_value(value: object) -> str:
    if isinstance(value, list):
        return "|".join(value)
    if isinstance(value, dict):
        return json.dumps(value)
    return "" if value is None else str(value)


def write(path: Path, rows: list[dict[str, object]], columns: list[str]) -> Path:
    if path.suffix == ".csv":
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            writer.writerows([_csv_value(row.get(c)) for c in columns] for row in rows)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        table = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows])
        pq.write_table(table, path)
    return path


def _stored(factory: sessionmaker[Session]) -> tuple[dict[str, Item], list[Event]]:
    with factory() as session:
        items = {i.item_id: i for i in session.scalars(select(Item))}
        events = list(session.scalars(select(Event).order_by(Event.seq)))
        session.expunge_all()
    return items, events


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_good_rows_in_each_format_and_a_rerun_adds_nothing(
        store: tuple[sessionmaker[Session], Settings], tmp_path: Path, suffix: str) -> None:
    factory, settings = store
    item_columns = ["item_id", "title", "text", "categories", "attributes"]
    event_columns = ["user_id", "item_id", "timestamp", "type", "value", "text", "event_id"]
    items_rows = ITEMS if suffix != ".parquet" else [
        {**row, "attributes": json.dumps(row.get("attributes", {}))} for row in ITEMS]
    events_rows = EVENTS if suffix != ".parquet" else [
        {**row, "timestamp": str(row["timestamp"])} for row in EVENTS]
    items = write(tmp_path / f"items{suffix}", items_rows, item_columns)
    events = write(tmp_path / f"events{suffix}", events_rows, event_columns)
    report = import_files(items, events, factory, settings, progress=False)
    assert report.ok and (report.items, report.accepted, report.duplicates) == (3, 4, 0)
    stored_items, stored_events = _stored(factory)
    assert stored_items["b1"].categories == ["jazz"]
    assert stored_items["b1"].attributes == {"year": 1957}
    assert stored_items["b2"].categories == ["jazz", "modal"] and stored_items["b2"].text is None
    # file order is ingestion order (seq): the tie-break between equal timestamps
    assert [(e.user_id, e.item_id) for e in stored_events] == [
        (r["user_id"], r["item_id"]) for r in EVENTS]
    assert [e.type for e in stored_events] == ["play", "interaction", "interaction",
                                               "interaction"]
    assert stored_events[1].value == 4.5 and stored_events[2].text == "great"
    assert stored_events[2].event_id == "bob-1"
    assert stored_events[1].occurred_at == stored_events[0].occurred_at  # epoch == ISO
    again = import_files(items, events, factory, settings, progress=False)
    assert again.ok and (again.accepted, again.duplicates) == (0, 4)
    assert again.counts[0].new_items == 0
    assert len(_stored(factory)[1]) == 4


def test_column_mapping_and_either_file_alone(
        store: tuple[sessionmaker[Session], Settings], tmp_path: Path) -> None:
    factory, settings = store
    items = tmp_path / "catalogue.csv"
    items.write_text("sku,name,genres\nx1,One,a|b\nx2,Two,\n")
    events = tmp_path / "log.jsonl"
    events.write_text(json.dumps({"who": "u9", "sku": "x2", "when": 1714557600}) + "\n")
    mapping = {"sku": "item_id", "name": "title", "genres": "categories", "who": "user_id",
               "when": "timestamp"}
    assert import_files(items, None, factory, settings, mapping, progress=False).items == 2
    report = import_files(None, events, factory, settings, mapping, progress=False)
    assert report.ok and report.accepted == 1
    stored_items, stored_events = _stored(factory)
    assert stored_items["x1"].categories == ["a", "b"] and stored_items["x2"].categories == []
    assert [(e.user_id, e.item_id) for e in stored_events] == [("u9", "x2")]
    with pytest.raises(FileImportError, match=r"need column\(s\) \['item_id', 'title'\]"):
        import_files(items, None, factory, settings, progress=False)  # no mapping
    with pytest.raises(FileImportError, match="unknown format"):
        import_files(tmp_path / "x.xlsx", None, factory, settings, progress=False)


BAD_EVENTS = """user_id,item_id,timestamp,type,value
u1,b1,2024-05-01T10:00:00Z,play,
u1,b1,yesterday,play,
u1,b2,2024-05-01T10:00:00Z,Not A Type,
u1,b2,2024-05-01T10:00:00Z,play,loud
,b2,2024-05-01T10:00:00Z,play,
u1,b2,2999-01-01T00:00:00Z,play,
u1,nope,2024-05-01T10:00:00Z,play,
u1,b3,2024-05-01T11:00:00Z,play,3
u1,b3
"""


def test_every_kind_of_bad_row_is_reported_with_its_line_and_refuses_its_batch(
        store: tuple[sessionmaker[Session], Settings], tmp_path: Path) -> None:
    factory, settings = store
    items = write(tmp_path / "items.jsonl", ITEMS, [])
    events = tmp_path / "events.csv"
    events.write_text(BAD_EVENTS)
    messages: list[str] = []
    report = import_files(items, events, factory, settings, progress=False,
                          err=messages.append)
    assert not report.ok and report.items == 3 and report.accepted == 0
    assert _stored(factory)[1] == []  # the batch with bad rows wrote nothing
    text = "\n".join(messages)
    for expected in ("events.csv:3: timestamp: not an ISO-8601 timestamp",
                     "events.csv:4: type: String should match pattern",
                     "events.csv:5: value: Input should be a valid number",
                     "events.csv:6: user_id: Field required",
                     "events.csv:10: row: 2 fields where the header has 5"):
        assert expected in text, text
    # schema errors stop the batch before the store sees it; store-level errors next run
    assert report.counts[1].stopped_at == "events.csv:2-10"

    rejects = tmp_path / "rejects.jsonl"
    messages.clear()
    skipped = import_files(items, events, factory, settings, skip_bad=True, rejects=rejects,
                           progress=False, err=messages.append)
    assert not skipped.ok and skipped.accepted == 2  # lines 2 and 9
    text = "\n".join(messages)
    assert "events.csv:7: timestamp: timestamp is in the future" in text
    assert "events.csv:8: item_id: unknown item 'nope': POST it to /items first" in text
    assert "events name 1 item(s) the store does not have: nope" in text
    refused = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert sorted(r["line"] for r in refused) == [3, 4, 5, 6, 7, 8, 10]
    assert all(r["file"] == "events.csv" and r["errors"] for r in refused)
    assert [e.item_id for e in _stored(factory)[1]] == ["b1", "b3"]


def test_unknown_items_are_an_error_unless_the_items_come_in_the_same_run(
        store: tuple[sessionmaker[Session], Settings], tmp_path: Path) -> None:
    factory, settings = store
    events = write(tmp_path / "events.jsonl", EVENTS, [])
    messages: list[str] = []
    alone = import_files(None, events, factory, settings, progress=False, err=messages.append)
    assert not alone.ok and alone.accepted == 0
    assert any("events name 3 item(s) the store does not have: b1, b2, b3" in m
               for m in messages), messages
    items = write(tmp_path / "items.jsonl", ITEMS, [])
    together = import_files(items, events, factory, settings, progress=False)
    assert together.ok and together.accepted == 4


def test_bad_jsonl_lines_and_the_cli_exit_status(
        store: tuple[sessionmaker[Session], Settings], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    factory, settings = store
    items = tmp_path / "items.jsonl"
    items.write_text('{"item_id": "ok", "title": "Fine"}\n{"item_id": \n[1, 2]\n'
                     '{"item_id": "no title"}\n'
                     '{"item_id": "c", "title": "C", "attributes": "nope"}\n')
    from app.core import config

    monkeypatch.setenv("DRIFTREC_DATABASE_URL", settings.database_url)
    config.get_settings.cache_clear()
    try:
        status = main(["import", "--items", str(items), "--skip-bad", "--no-progress",
                       "--rejects", str(tmp_path / "r.jsonl")])
        out = capsys.readouterr()
        assert status == 1
        assert "items.jsonl:2: row: not JSON" in out.err
        assert "items.jsonl:3: row: a line must be a JSON object" in out.err
        assert "items.jsonl:4: item_id: String should match pattern" in out.err
        assert "items.jsonl:4: title: Field required" in out.err
        assert "items.jsonl:5: attributes: attributes must be a JSON object" in out.err
        assert "items: 5 rows read, 1 upserted (1 new), 4 refused" in out.out
        good = tmp_path / "good.csv"
        good.write_text("item_id,title\nz,Zed\n")
        assert main(["import", "--items", str(good), "--no-progress"]) == 0
        assert main(["import", "--events", str(tmp_path / "none.csv"), "--no-progress"]) == 2
    finally:
        config.get_settings.cache_clear()
    assert set(_stored(factory)[0]) == {"ok", "z"}
