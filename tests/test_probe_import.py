"""Importer faults found by the outsider probe: rows Python cannot represent or parse (a
Parquet time past year 9999, JSON nested deeper than the parser goes) are row-level errors,
never a traceback; rows reusing an ``event_id`` with other content are conflicts; a ``--map``
onto a column the file already has is an error."""

from __future__ import annotations

import csv
import itertools
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.core import config
from app.core.config import Settings
from app.store.db import make_engine, make_session_factory
from app.store.models import Event, Item
from training.data.__main__ import main

DEEP = 5_000  # far deeper than Python's recursion limit


@pytest.fixture
def store(database_url: str) -> Iterator[tuple[sessionmaker[Session], Settings]]:
    engine = make_engine(database_url)
    yield make_session_factory(engine), Settings(database_url=database_url)
    engine.dispose()


@pytest.fixture
def cli(store: tuple[sessionmaker[Session], Settings], monkeypatch: pytest.MonkeyPatch
        ) -> Iterator[sessionmaker[Session]]:
    """``main`` runs against the test store."""
    monkeypatch.setenv("DRIFTREC_DATABASE_URL", store[1].database_url)
    config.get_settings.cache_clear()
    yield store[0]
    config.get_settings.cache_clear()


def _stored(factory: sessionmaker[Session]) -> tuple[set[str], list[Event]]:
    with factory() as session:
        items = set(session.scalars(select(Item.item_id)))
        events = list(session.scalars(select(Event).order_by(Event.seq)))
        session.expunge_all()
    return items, events


def _items_file(tmp_path: Path) -> Path:
    path = tmp_path / "items.csv"
    path.write_text("item_id,title\nb1,One\nb2,Two\n")
    return path


@pytest.mark.parametrize("skip_bad", [False, True])
def test_parquet_time_past_year_9999_is_a_row_error(
        cli: sessionmaker[Session], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        skip_bad: bool) -> None:
    items = _items_file(tmp_path)
    assert main(["import", "--items", str(items), "--no-progress"]) == 0
    capsys.readouterr()
    # Row 1: fine. Row 2: an instant (20:00 UTC on the last day) that a +14:00 column shows
    # as year 10000: read, then refused as any future time. Row 3: past year 9999 in UTC.
    late = int(datetime(9999, 12, 31, 20, tzinfo=UTC).timestamp()) * 1_000_000
    beyond = late + 86_400 * 1_000_000
    first = int(datetime(2024, 5, 1, tzinfo=UTC).timestamp()) * 1_000_000
    table = pa.table({
        "user_id": ["u1", "u1", "u1"], "item_id": ["b1", "b2", "b1"],
        "timestamp": pa.array([first, late, beyond], type=pa.timestamp("us", tz="+14:00")),
    })
    events = tmp_path / "events.parquet"
    pq.write_table(table, events)
    args = ["import", "--events", str(events), "--no-progress"]
    if skip_bad:
        args += ["--skip-bad", "--rejects", str(tmp_path / "rejects.jsonl")]
    status = main(args)
    out = capsys.readouterr()
    assert status == 1
    assert "Traceback" not in out.err
    assert "events.parquet:3: timestamp: timestamp out of range" in out.err, out.err
    stored = _stored(cli)[1]
    if skip_bad:
        assert "events.parquet:2: timestamp: timestamp is in the future" in out.err, out.err
        assert [e.item_id for e in stored] == ["b1"]
        refused = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text()
                   .splitlines()]
        assert sorted(r["line"] for r in refused) == [2, 3]
    else:
        assert stored == []  # the batch with the bad row wrote nothing


@pytest.mark.parametrize("skip_bad", [False, True])
def test_json_nested_deeper_than_the_parser_goes_is_a_row_error(
        cli: sessionmaker[Session], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        skip_bad: bool) -> None:
    deep = "[" * DEEP + "]" * DEEP
    items_csv = tmp_path / "items.csv"
    with items_csv.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_id", "title", "attributes"])
        writer.writerow(["c1", "Fine", '{"a": 1}'])
        writer.writerow(["c2", "Deep", '{"a": ' + deep + "}"])
    items_jsonl = tmp_path / "items.jsonl"
    items_jsonl.write_text('{"item_id": "j1", "title": "Fine"}\n'
                           '{"item_id": "j2", "title": "Deep", "attributes": {"a": '
                           + deep + "}}\n")
    for path, line, field in ((items_csv, 3, "attributes"), (items_jsonl, 2, "row")):
        args = ["import", "--items", str(path), "--no-progress"]
        if skip_bad:
            args += ["--skip-bad", "--rejects", str(tmp_path / f"{path.stem}.rejects.jsonl")]
        status = main(args)
        out = capsys.readouterr()
        assert status == 1
        assert "Traceback" not in out.err
        assert f"{path.name}:{line}: {field}: " in out.err and "nest" in out.err, out.err
    assert _stored(cli)[0] == ({"c1", "j1"} if skip_bad else set())


def test_rows_reusing_an_event_id_with_other_content_are_conflicts(
        cli: sessionmaker[Session], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items = _items_file(tmp_path)
    first = tmp_path / "first.csv"
    first.write_text("event_id,user_id,item_id,timestamp,value\n"
                     "e1,u1,b1,2024-05-01T10:00:00Z,1\n"
                     "e2,u1,b2,2024-05-01T11:00:00Z,2\n")
    assert main(["import", "--items", str(items), "--events", str(first),
                 "--no-progress"]) == 0
    capsys.readouterr()
    # line 2: e1 again as stored (a duplicate); line 3: e2 with another value (a conflict with
    # the store); line 4: new e3; line 5: e3 again with another item (a conflict in the file)
    second = tmp_path / "second.csv"
    second.write_text("event_id,user_id,item_id,timestamp,value\n"
                      "e1,u1,b1,2024-05-01T10:00:00Z,1\n"
                      "e2,u1,b2,2024-05-01T11:00:00Z,5\n"
                      "e3,u2,b1,2024-05-02T10:00:00Z,\n"
                      "e3,u2,b2,2024-05-02T10:00:00Z,\n")
    rejects = tmp_path / "rejects.jsonl"
    status = main(["import", "--events", str(second), "--no-progress", "--rejects",
                   str(rejects)])
    out = capsys.readouterr()
    assert status == 1, out
    assert "second.csv:3: event_id: event_id 'e2' is already taken" in out.err, out.err
    assert "second.csv:5: event_id: event_id 'e3' is already taken" in out.err, out.err
    assert "second.csv:2:" not in out.err and "second.csv:4:" not in out.err
    assert "2 row(s) reuse an event_id with other content" in out.err
    assert ("events: 4 rows read, 1 stored, 1 already stored, 2 conflicting" in out.out), out
    assert sorted(json.loads(line)["line"] for line in rejects.read_text().splitlines()) == [
        3, 5]
    stored = {e.event_id: e for e in _stored(cli)[1]}
    assert set(stored) == {"e1", "e2", "e3"}
    assert stored["e2"].value == 2 and stored["e3"].item_id == "b1"  # the first kept

    status = main(["import", "--events", str(second), "--no-progress", "--accept-conflicts"])
    out = capsys.readouterr()
    assert status == 0, out
    assert "2 conflicting" in out.out and "second.csv:3: event_id:" in out.err
    assert len(_stored(cli)[1]) == 3


def test_a_map_onto_a_column_the_file_already_has_is_an_error(
        cli: sessionmaker[Session], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items = _items_file(tmp_path)
    assert main(["import", "--items", str(items), "--no-progress"]) == 0
    events_csv = tmp_path / "events.csv"
    events_csv.write_text("u,user_id,item_id,timestamp\nu1,u2,b1,2024-05-01T10:00:00Z\n")
    events_pq = tmp_path / "events.parquet"
    pq.write_table(pa.table({"u": ["u1"], "user_id": ["u2"], "item_id": ["b1"],
                             "timestamp": ["2024-05-01T10:00:00Z"]}), events_pq)
    for path in (events_csv, events_pq):
        capsys.readouterr()
        assert main(["import", "--events", str(path), "--map", "u=user_id",
                     "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "column(s) ['u', 'user_id'] would all become 'user_id' (--map u=user_id)" in err
    events_jsonl = tmp_path / "events.jsonl"
    events_jsonl.write_text(
        '{"u": "u1", "item_id": "b1", "timestamp": "2024-05-01T10:00:00Z"}\n'
        '{"u": "u1", "user_id": "u2", "item_id": "b2", "timestamp": "2024-05-01T10:00:00Z"}\n')
    assert main(["import", "--events", str(events_jsonl), "--map", "u=user_id",
                 "--skip-bad", "--rejects", str(tmp_path / "r.jsonl"), "--no-progress"]) == 1
    assert "events.jsonl:2: row: column(s) ['u', 'user_id'] would all become" in (
        capsys.readouterr().err)
    assert [(e.user_id, e.item_id) for e in _stored(cli)[1]] == [("u1", "b1")]
    # renaming the file's own column away is the way out
    assert main(["import", "--events", str(events_csv), "--map", "u=user_id", "--map",
                 "user_id=other", "--no-progress"]) == 0


# ---------------------------------------------------------------- fuzz: hostile event rows
USER_CHOICES = ["u", "v", "", "{t} space", "{t}" + "x" * 200]
TIME_CHOICES = ["2024-05-01T10:00:00Z", "2024-05-01T10:00:00", "1714557600", "0", "-1",
                "253402300800", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00",
                "2999-01-01T00:00:00Z", "nan", "yesterday", ""]
VALUE_CHOICES = ["", "1", "4.5", "nan", "inf", "1e309", "true", "loud"]
TEXT_CHOICES = ["", "é", "<a href=x>", "\u2028", "x" * 30_000, "[" * 3_000]
ROWS = st.lists(st.tuples(st.sampled_from(USER_CHOICES), st.sampled_from(["b1", "b2", "nope"]),
                          st.sampled_from(TIME_CHOICES), st.sampled_from(VALUE_CHOICES),
                          st.sampled_from(TEXT_CHOICES), st.sampled_from(["", "e1", "e2"])),
                min_size=1, max_size=8)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=ROWS, skip_bad=st.booleans())
def test_hostile_rows_are_row_errors_and_a_refused_batch_stores_nothing(
        cli: sessionmaker[Session], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        rows: list[tuple[str, str, str, str, str, str]], skip_bad: bool) -> None:
    token = f"f{next(_EXAMPLES)}"
    items = tmp_path / "items.csv"
    if not items.exists():
        items.write_text("item_id,title\nb1,One\nb2,Two\n")
        assert main(["import", "--items", str(items), "--no-progress"]) == 0
    events = tmp_path / f"{token}.csv"
    with events.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id", "timestamp", "value", "text", "event_id"])
        for user, item, moment, value, text, event_id in rows:
            user = user.format(t=token) if "{t}" in user else (f"{token}-{user}" if user
                                                                else "")
            writer.writerow([user, item, moment, value, text,
                             f"{token}-{event_id}" if event_id else ""])
    capsys.readouterr()
    args = ["import", "--events", str(events), "--no-progress"]
    if skip_bad:
        args += ["--skip-bad", "--rejects", str(tmp_path / f"{token}.rejects.jsonl")]
    status = main(args)
    out = capsys.readouterr()
    assert status in (0, 1), (status, out.err)
    assert "Traceback" not in out.err
    problems = [line for line in out.err.splitlines()
                if re.match(rf"{events.name}:\d+:", line)]
    assert all(re.match(rf"{events.name}:\d+: [a-z_]+: .+", line) for line in problems), problems
    with cli() as session:
        stored = session.scalar(select(func.count()).select_from(Event)
                                .where(Event.user_id.like(f"{token}%")))
    if status == 0:
        assert not problems
    elif not skip_bad and "refused" in out.err:
        assert stored == 0, out  # one batch: a refused row writes nothing of it
    if status == 1:
        assert problems, out


_EXAMPLES = itertools.count()
