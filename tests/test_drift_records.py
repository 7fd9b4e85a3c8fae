"""Drift records and checks: written once per change point, paged, aggregated in SQL.

Every test runs on SQLite and on the real PostgreSQL server (the `database_url` fixture).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.store.db import transaction
from app.store.drift_records import (
    InvalidCursor,
    drift_history,
    drift_summary,
    record_check,
    record_drift,
    top_transitions,
)
from app.store.models import DriftCheck, DriftRecord
from app.store.repository import count_rows

SUNDAY = datetime(2026, 11, 22, tzinfo=UTC)  # 2026-11-23 is a Monday
MONDAY = SUNDAY + timedelta(days=1)


def _drift(session: Session, user_id: str, change_event_id: str, detected_at: datetime,
           kind: str = "abrupt", before: dict[str, float] | None = None,
           after: dict[str, float] | None = None) -> tuple[DriftRecord, bool]:
    return record_drift(
        session, user_id=user_id, change_event_id=change_event_id,
        change_at=detected_at - timedelta(hours=1), change_index=12, score=0.9, threshold=0.5,
        kind=kind, model_version="3", detected_at=detected_at,
        interests_before={"Drama": 0.7, "Comedy": 0.3} if before is None else before,
        interests_after={"Sci-Fi": 0.6, "Drama": 0.4} if after is None else after,
    )


def test_a_change_point_is_recorded_once(factory: sessionmaker[Session]) -> None:
    with transaction(factory) as session:
        first, created = _drift(session, "u1", "e7", MONDAY)
    with transaction(factory) as session:
        again, created_again = _drift(session, "u1", "e7", MONDAY + timedelta(hours=5))
        other, created_other = _drift(session, "u2", "e7", MONDAY)
        assert count_rows(session, DriftRecord) == 2
    assert (created, created_again, created_other) == (True, False, True)
    assert again.id == first.id != other.id
    assert again.detected_at == MONDAY and again.detected_at.tzinfo is not None
    assert (again.from_topic, again.to_topic) == ("Drama", "Sci-Fi")
    assert again.interests_after == {"Sci-Fi": 0.6, "Drama": 0.4}


def test_concurrent_calls_create_one_record(factory: sessionmaker[Session]) -> None:
    barrier, results = threading.Barrier(4), []

    def write() -> None:
        barrier.wait()
        with transaction(factory) as session:
            record, created = _drift(session, "u1", "e9", MONDAY)
            results.append((record.id, created))

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 4
    assert len({record_id for record_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1


def test_history_is_newest_first_and_pages_with_a_cursor(
        factory: sessionmaker[Session]) -> None:
    times = [MONDAY, MONDAY + timedelta(hours=1), MONDAY + timedelta(hours=1),
             MONDAY + timedelta(hours=2), MONDAY + timedelta(hours=3)]
    with transaction(factory) as session:
        ids = [_drift(session, "u1", f"e{i}", at)[0].id for i, at in enumerate(times)]
    expected = [ids[4], ids[3], ids[2], ids[1], ids[0]]  # same time: higher id first
    with factory() as session:
        seen, cursor, pages = [], None, 0
        while True:
            page, cursor = drift_history(session, limit=2, cursor=cursor)
            seen += [record.id for record in page]
            pages += 1
            if cursor is None:
                break
        whole, last = drift_history(session, limit=5)
    assert seen == expected and pages == 3
    assert [record.id for record in whole] == expected and last is None


def test_history_filters(factory: sessionmaker[Session]) -> None:
    with transaction(factory) as session:
        _drift(session, "u1", "a", MONDAY, kind="abrupt")
        _drift(session, "u1", "b", MONDAY + timedelta(hours=2), kind="gradual")
        _drift(session, "u2", "c", MONDAY + timedelta(hours=4), kind="gradual")
    with factory() as session:
        def keys(**filters: object) -> list[str]:
            return [r.change_event_id for r in drift_history(session, **filters)[0]]

        assert keys(user_id="u1") == ["b", "a"]
        assert keys(kind="gradual") == ["c", "b"]
        assert keys(since=MONDAY + timedelta(hours=2)) == ["c", "b"]  # since is inclusive
        assert keys(until=MONDAY + timedelta(hours=2)) == ["a"]  # until is exclusive
        assert keys(user_id="u3") == []
        with pytest.raises(InvalidCursor):
            drift_history(session, cursor="not-a-cursor")


def _fill_statistics(session: Session) -> None:
    """Checks and drifts around the Sunday/Monday (day and ISO week) boundary."""
    # Sunday 23:30 UTC, given as Monday 00:30+01:00: buckets must still put it on Sunday.
    sunday_late = (SUNDAY + timedelta(hours=23, minutes=30)).astimezone(
        timezone(timedelta(hours=1)))
    checks = [("u1", sunday_late), ("u1", MONDAY + timedelta(hours=10, minutes=5)),
              ("u1", MONDAY + timedelta(hours=10, minutes=40)),
              ("u2", MONDAY + timedelta(hours=10, minutes=50)),
              ("u3", MONDAY + timedelta(hours=11, minutes=10))]
    drifts = {("u1", sunday_late), ("u1", checks[2][1]), ("u2", checks[3][1])}
    for n, (user_id, at) in enumerate(checks):
        record_id = None
        if (user_id, at) in drifts:
            record_id = _drift(session, user_id, f"e{n}", at)[0].id
        record_check(session, user_id=user_id, model_version="3",
                     drift_detected=record_id is not None, record_id=record_id, checked_at=at)
    if session.get_bind().dialect.name == "postgresql":
        # Buckets are UTC whatever the connection's time zone.
        session.execute(text("SET LOCAL TIME ZONE 'Asia/Tokyo'"))


def test_summary_buckets(factory: sessionmaker[Session]) -> None:
    with transaction(factory) as session:
        _fill_statistics(session)
        hourly = drift_summary(session, None, None, "hour")
        daily = drift_summary(session, None, None, "day")
        weekly = drift_summary(session, SUNDAY - timedelta(days=30), None, "week")
        monday_only = drift_summary(session, MONDAY, MONDAY + timedelta(days=1), "day")
        assert count_rows(session, DriftCheck) == 5
    rows = [(r["bucket_start"], r["users_checked"], r["drifts"], r["drift_rate"])
            for r in hourly]
    assert rows == [(SUNDAY + timedelta(hours=23), 1, 1, 1.0),
                    (MONDAY + timedelta(hours=10), 2, 2, 1.0),
                    (MONDAY + timedelta(hours=11), 1, 0, 0.0)]
    assert [(r["bucket_start"], r["users_checked"], r["drifts"]) for r in daily] == [
        (SUNDAY, 1, 1), (MONDAY, 3, 2)]
    assert daily[1]["drift_rate"] == pytest.approx(2 / 3)
    assert [(r["bucket_start"], r["users_checked"], r["drifts"]) for r in weekly] == [
        (SUNDAY - timedelta(days=6), 1, 1), (MONDAY, 3, 2)]
    assert [(r["bucket_start"], r["drifts"]) for r in monday_only] == [(MONDAY, 2)]
    assert all(r["bucket_start"].tzinfo is not None for r in hourly + daily + weekly)
    with pytest.raises(ValueError):
        drift_summary(session, None, None, "month")  # type: ignore[arg-type]


def test_top_transitions(factory: sessionmaker[Session]) -> None:
    pairs = [({"Drama": 1.0}, {"Comedy": 1.0}), ({"Drama": 0.6, "War": 0.4}, {"Comedy": 0.9}),
             ({"Action": 0.5, "Western": 0.5}, {"Drama": 1.0}),  # tie: Action by name
             ({}, {"Drama": 1.0}),  # no "from": not a transition
             ({"Drama": 1.0}, {"Comedy": 1.0})]
    with transaction(factory) as session:
        for n, (before, after) in enumerate(pairs):
            _drift(session, "u1", f"e{n}", MONDAY + timedelta(hours=n), before=before,
                   after=after)
    with factory() as session:
        everything = top_transitions(session, None, None, limit=10)
        first = top_transitions(session, None, None, limit=1)
        early = top_transitions(session, MONDAY, MONDAY + timedelta(hours=3), limit=10)
    assert everything == [{"from": "Drama", "to": "Comedy", "count": 3},
                          {"from": "Action", "to": "Drama", "count": 1}]
    assert first == everything[:1]
    assert early == [{"from": "Drama", "to": "Comedy", "count": 2},
                     {"from": "Action", "to": "Drama", "count": 1}]
