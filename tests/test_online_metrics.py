"""Champion/challenger units (issue 18, point 4): the sticky split, the online metrics'
pure functions, and the impressions store with the metrics over it (SQLite and PostgreSQL).
The served versions themselves are in tests/test_challenger.py."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.core.exceptions import InvalidInput
from app.domain import online_metrics as om
from app.domain.assignment import assignment_point, serves_challenger
from app.schemas.events import EventIn
from app.schemas.items import ItemIn
from app.services import ingestion
from app.services.impressions import ImpressionLog
from app.services.online_metrics import Windows, online_metrics
from app.store import erasure
from app.store.db import transaction
from app.store.impressions import (
    ImpressionRow,
    count_impressions,
    impressions_with_followups,
    write_impressions,
)


# ------------------------------------------------------------------------- the split
def test_the_split_is_stable_keyed_and_close_to_the_share() -> None:
    users = [f"user-{n}" for n in range(20_000)]
    points = np.array([assignment_point(u, "salt-a") for u in users])
    assert ((points >= 0) & (points < 1)).all()
    # the same id and salt: the same point, whatever process asks (no per-process seed)
    assert [assignment_point(u, "salt-a") for u in users[:50]] == list(points[:50])
    for share in (0.05, 0.1, 0.5):
        chosen = sum(serves_challenger(u, share, "salt-a") for u in users)
        # binomial sd at 20,000 users is at most 0.0035: five of them
        assert abs(chosen / len(users) - share) < 0.018, (share, chosen)
    # a larger share only adds users; nobody moves out
    small = {u for u in users if serves_challenger(u, 0.1, "salt-a")}
    large = {u for u in users if serves_challenger(u, 0.3, "salt-a")}
    assert small < large
    # another salt reshuffles who is in (the overlap is what chance gives: ~share^2)
    other = {u for u in users if serves_challenger(u, 0.1, "salt-b")}
    assert abs(len(small & other) / len(users) - 0.01) < 0.005
    assert not any(serves_challenger(u, 0.0, "salt-a") for u in users[:1000])
    assert all(serves_challenger(u, 1.0, "salt-a") for u in users[:1000])
    # uniform: every tenth of [0, 1) holds about a tenth of the users
    counts = np.histogram(points, bins=10, range=(0, 1))[0]
    assert counts.min() > 1_800 and counts.max() < 2_200


# ------------------------------------------------------------------ pure online metrics
def test_window_length_counts_the_first_events_inside_the_time_window() -> None:
    assert om.window_length(100.0, [101.0, 150.0, 200.0], 5, 60.0) == 2
    assert om.window_length(100.0, [101.0, 150.0, 200.0], 1, 600.0) == 1
    assert om.window_length(100.0, [], 5, 60.0) == 0
    assert om.window_length(100.0, [160.0], 5, 60.0) == 1  # exactly at the window's end
    assert om.is_settled(5, 100.0, 101.0, 5, 60.0)  # enough events followed
    assert om.is_settled(0, 100.0, 160.0, 5, 60.0)  # the time window is over
    assert not om.is_settled(4, 100.0, 159.0, 5, 60.0)


def test_hit_ranks_take_the_best_placed_item_within_k() -> None:
    recommended = [["a", "b", "c"], ["a", "b", "c"], ["a", "b", "c"], ["x"], []]
    followed = [["c", "b"], ["c"], ["z"], ["x"], ["a"]]
    assert om.hit_ranks(recommended, followed, 3).tolist() == [2, 3, 0, 1, 0]
    assert om.hit_ranks(recommended, followed, 2).tolist() == [2, 0, 0, 1, 0]
    assert om.reciprocal_ranks(np.array([2, 3, 0, 1])).tolist() == [0.5, 1 / 3, 0.0, 1.0]
    with pytest.raises(ValueError):
        om.hit_ranks([["a"]], [], 1)


def test_wilson_and_normal_intervals() -> None:
    low, high = om.wilson_interval(8, 10)  # type: ignore[misc]
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    low, high = om.wilson_interval(0, 20)  # type: ignore[misc]
    assert low == 0.0 and high == pytest.approx(0.1611, abs=1e-4)
    assert om.wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        om.wilson_interval(3, 2)
    values = np.array([1.0, 0.5, 0.0, 0.0, 1.0, 0.25])
    low, high = om.mean_interval(values)  # type: ignore[misc]
    half = om.Z95 * values.std(ddof=1) / np.sqrt(len(values))
    assert low == pytest.approx(values.mean() - half) and high == pytest.approx(
        min(1.0, values.mean() + half))
    assert om.mean_interval(np.array([0.5])) == (0.0, 1.0)
    assert om.mean_interval(np.array([])) is None
    # more impressions, narrower intervals
    wide, narrow = om.wilson_interval(30, 100), om.wilson_interval(300, 1000)
    assert wide and narrow and narrow[1] - narrow[0] < wide[1] - wide[0]


def test_summaries_and_buckets() -> None:
    summary = om.summarize(np.array([1, 0, 2, 0]))
    assert (summary.impressions, summary.hits, summary.hit_rate) == (4, 2, 0.5)
    assert summary.mrr == pytest.approx((1 + 0.5) / 4)
    assert summary.hit_rate_ci == om.wilson_interval(2, 4)
    empty = om.summarize(np.array([], dtype=np.int64))
    assert empty.impressions == 0 and empty.hit_rate is None and empty.mrr_ci is None
    monday = datetime(2026, 12, 7, tzinfo=UTC).timestamp()  # a Monday
    times = np.array([monday + 3_600 * 30, monday + 3_600 * 30.5, monday - 1, monday + 5])
    assert om.bucket_starts(times, "day").tolist() == [
        monday + 86_400, monday + 86_400, monday - 86_400, monday]
    assert om.bucket_starts(times, "hour")[1] == monday + 3_600 * 30
    assert om.bucket_starts(times, "week").tolist() == [monday, monday, monday - 7 * 86_400,
                                                       monday]
    series = om.series(times, np.array([1, 0, 0, 3]), "day")
    assert [start for start, _ in series] == [monday - 86_400, monday, monday + 86_400]
    assert [(s.impressions, s.hits) for _, s in series] == [(1, 0), (1, 1), (2, 1)]


# ------------------------------------------------------------------ the store (2 backends)
@pytest.fixture
def t0() -> datetime:
    """A moment just ahead: after the fixture's users were created, events at it are valid."""
    return datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5)


def _impression(user: str, version: str, items: list[str], at: datetime,
                k: int = 10) -> ImpressionRow:
    return ImpressionRow(str(uuid.uuid4()), user, version, items, k, at)


def _store_events(factory: sessionmaker[Session], rows: list[tuple[str, str, datetime]]
                  ) -> None:
    settings = Settings(max_future_skew_seconds=10 * 86_400)
    items = sorted({item for _, item, _ in rows})
    with transaction(factory) as session:
        ingestion.upsert_items(session, [ItemIn(item_id=i, title=f"Item {i}") for i in items],
                               settings)
    with transaction(factory) as session:
        ingestion.ingest_events(session, [
            EventIn(event_id=f"ev-{n}", user_id=user, item_id=item, type="view",
                    timestamp=at) for n, (user, item, at) in enumerate(rows)], settings)


def test_impressions_are_written_for_known_users_only_and_once(
        factory: sessionmaker[Session], t0: datetime) -> None:
    kept = _impression("u1", "1", ["a", "b"], t0)
    rows = [kept, _impression("u2", "2", ["c"], t0),
            _impression("nobody", "1", ["a"], t0),  # no such user
            _impression("u3", "1", ["a"], t0 - timedelta(days=3))]  # older than the user
    with transaction(factory) as session:
        outcome = write_impressions(session, rows)
    assert (outcome.written, outcome.unknown_user) == (2, 2)
    with transaction(factory) as session:  # a retried batch writes nothing twice
        assert write_impressions(session, rows[:2]).written == 0
    with factory() as session:
        assert count_impressions(session) == 2 and count_impressions(session, "u1") == 1


def test_followups_are_the_next_events_in_order_up_to_the_window(
        factory: sessionmaker[Session], t0: datetime) -> None:
    _store_events(factory, [("u1", "x", t0 - timedelta(seconds=5)),  # before: not counted
                            ("u1", "b", t0 + timedelta(seconds=20)),
                            ("u1", "a", t0 + timedelta(seconds=10)),
                            ("u1", "c", t0 + timedelta(seconds=30)),
                            ("u2", "a", t0 + timedelta(seconds=1))])
    with transaction(factory) as session:
        write_impressions(session, [_impression("u1", "1", ["a", "b"], t0),
                                    _impression("u3", "1", ["a"], t0)])
    with factory() as session:
        rows = list(impressions_with_followups(session, since=None, until=None,
                                               horizon=t0 + timedelta(days=1), window=2))
        assert [(r[0], r[5]) for r in rows] == [(rows[0][0], "a"), (rows[0][0], "b"),
                                                (rows[2][0], None)]
        assert rows[0][2] == ["a", "b"] and rows[0][4] == t0
        short = list(impressions_with_followups(session, since=None, until=None,
                                                horizon=t0 + timedelta(seconds=15), window=5))
        assert [r[5] for r in short] == ["a", None]
        none = list(impressions_with_followups(session, since=t0 + timedelta(seconds=1),
                                               until=None, horizon=t0, window=5))
        assert none == []


def test_erasure_deletes_the_users_impressions_in_its_transaction(
        factory: sessionmaker[Session], t0: datetime) -> None:
    _store_events(factory, [("u1", "a", t0), ("u2", "a", t0)])
    with transaction(factory) as session:
        write_impressions(session, [_impression("u1", "1", ["a"], t0 + timedelta(seconds=1)),
                                    _impression("u1", "2", ["b"], t0 + timedelta(seconds=2)),
                                    _impression("u2", "1", ["a"], t0 + timedelta(seconds=1))])
    late = _impression("u1", "1", ["a"], datetime.now(UTC))  # still queued in some worker
    with transaction(factory) as session:
        counts = erasure.erase_user(session, "u1")
    assert counts is not None and (counts.events, counts.impressions) == (1, 2)
    with factory() as session:
        assert count_impressions(session, "u1") == 0 and count_impressions(session) == 1
    # an impression made for the erased user, still queued somewhere, is not written later,
    # not even once the user is back with new events (the new user row is younger)
    _store_events(factory, [("u1", "a", t0 + timedelta(hours=1))])
    with transaction(factory) as session:
        assert write_impressions(session, [late]).unknown_user == 1
    with factory() as session:
        assert count_impressions(session, "u1") == 0


def test_online_metrics_per_version_from_the_store(factory: sessionmaker[Session],
                                                   t0: datetime) -> None:
    s = timedelta(seconds=1)
    _store_events(factory, [("u1", "x", t0 + 10 * s), ("u1", "b", t0 + 20 * s),
                            ("u1", "c", t0 + 30 * s),
                            ("u2", "c", t0 + 10 * s),
                            ("u3", "d", t0 + 5_000 * s)])  # after the time window
    with transaction(factory) as session:
        write_impressions(session, [
            _impression("u1", "1", ["a", "b", "c"], t0),  # next: x, b -> rank 2
            _impression("u2", "1", ["a", "b", "c"], t0),  # next: c -> rank 3 (a miss at 2)
            _impression("u3", "2", ["d", "e"], t0),  # d comes too late: a miss
            _impression("u1", "2", ["c"], t0 + 15 * s),  # next: b, c -> rank 1 (window 2)
        ])
    windows = Windows(events=2, seconds=1_000.0)
    later = t0 + timedelta(days=1)
    with factory() as session:
        result = online_metrics(session, since=None, until=None, k=3, bucket="day",
                                windows=windows, roles={"2": "champion"}, now=later)
        by_version = {v.model_version: v for v in result.versions}
        assert [v.model_version for v in result.versions] == ["2", "1"]  # the champion first
        one, two = by_version["1"], by_version["2"]
        assert (one.impressions, one.hits, one.pending, one.role) == (2, 2, 0, None)
        assert one.mrr == pytest.approx((1 / 2 + 1 / 3) / 2)
        assert (two.impressions, two.hits, two.role) == (2, 1, "champion")
        assert two.mrr == pytest.approx(0.5)
        assert one.hit_rate_ci is not None and one.hit_rate_ci.high == 1.0
        assert [(b.impressions, b.hits) for b in two.series] == [(2, 1)]
        # at k = 2, u2's rank-3 hit is a miss
        at2 = online_metrics(session, since=None, until=None, k=2, bucket="day",
                             windows=windows, roles={}, now=later)
        assert {v.model_version: v.hits for v in at2.versions} == {"1": 1, "2": 1}
        # one event counted per impression: u1's first event after t0 is x (a miss), and
        # after t0 + 15 s it is b (a miss for ["c"])
        one_event = online_metrics(session, since=None, until=None, k=3, bucket="day",
                                   windows=Windows(1, 1_000.0), roles={}, now=later)
        assert {v.model_version: v.hits for v in one_event.versions} == {"1": 1, "2": 0}
        # shortly after, windows with fewer than 2 events are still open: pending, counted
        # neither as a miss (u3, nothing yet) nor as a hit (u2's one event is a hit already)
        soon = online_metrics(session, since=None, until=None, k=3, bucket="day",
                              windows=windows, roles={}, now=t0 + 60 * s)
        assert {v.model_version: (v.impressions, v.hits, v.pending)
                for v in soon.versions} == {"1": (1, 1, 1), "2": (1, 1, 1)}
        # the range is on impression time, [since, until)
        ranged = online_metrics(session, since=t0 + s, until=None, k=3, bucket="hour",
                                windows=windows, roles={}, now=later)
        assert [(v.model_version, v.impressions) for v in ranged.versions] == [("2", 1)]
        assert online_metrics(session, since=None, until=t0, k=3, bucket="day",
                              windows=windows, roles={}, now=later).versions == []
        with pytest.raises(InvalidInput) as refused:
            online_metrics(session, since=t0 + s, until=t0, k=3, bucket="day",
                           windows=windows, roles={}, now=later)
        assert refused.value.problems[0].as_dict()["field"] == "since"


# ------------------------------------------------------------------ the bounded writer
def test_the_impression_log_drops_when_full_and_never_waits(
        factory: sessionmaker[Session]) -> None:
    """The writer stuck (its sessions wait on a gate, as on a database that does not answer):
    `record` returns at once, keeps what fits and drops the rest; once the database answers,
    what was kept is written."""
    gate = threading.Event()

    def stuck() -> Session:
        gate.wait(30)
        return factory()

    log = ImpressionLog(stuck, maxsize=3, batch_size=10, flush_seconds=0.01)  # type: ignore[arg-type]
    log.start()
    try:
        now = datetime.now(UTC)
        assert log.record(_impression("u1", "1", ["a"], now))
        deadline = time.monotonic() + 10
        while log.depth and time.monotonic() < deadline:  # the writer took it ...
            time.sleep(0.005)
        time.sleep(0.2)  # ... its batch window (10 ms) closed: it waits on the gate
        started = time.perf_counter()
        kept = [log.record(_impression("u1", "1", ["a"], now)) for _ in range(10)]
        took = time.perf_counter() - started
        assert kept == [True] * 3 + [False] * 7 and log.dropped == 7
        assert took < 0.5, took  # a blocking put would wait for the gate (30 s)
        gate.set()
        assert log.wait_idle(30)
        assert log.written == 4 and log.dropped == 7
    finally:
        gate.set()
        log.stop()
    with factory() as session:
        assert count_impressions(session, "u1") == 4
