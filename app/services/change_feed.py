"""Which users' events (and whether the catalogue) changed: lets serving trust what it remembers.

A remembered ranking stays right until the user has a new event or the catalogue changes. On
PostgreSQL, every write that changes either sends a `NOTIFY` in its own transaction (so it is
delivered exactly when the write commits), and each worker process keeps one connection
`LISTEN`ing. While that connection is up, a worker can answer a repeated `/recommend` from
memory without touching the database. While it is down (startup, an outage), or on SQLite,
which has no notifications, `ChangeFeed.token` returns None and serving checks the user's
event state in the database instead, as before.

Consistency: the worker that stored an event forgets the user's rankings before it
acknowledges the write, so a client reads its own writes. Other workers learn of it when the
notification arrives, normally within a few milliseconds of the commit.

An erasure sends the user's id after `ERASED_PREFIX`: every process drops the user's
remembered rankings and drift findings (app.services.runtime.ServingRuntime.forget_users).
The erasing process answers only once its own listener has received that notification
(`awaiting_erasure`): PostgreSQL delivers it to every listening process at once, so by then
the others have it too, give or take their threads' scheduling.

Item upserts send the ids of the items (app.store.changes.ITEMS_PREFIX): every process then
forgets its remembered answers (titles may have changed) and hands the ids to its catalogue
refresher (app.services.catalogue_refresh), which embeds them in the background.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
from sqlalchemy.engine import make_url

from app.store.changes import (
    CHANNEL,
    ERASED_PREFIX,
    EVERYTHING,
    ITEMS_PREFIX,
    parse_erased_payload,
    parse_item_payload,
)

logger = logging.getLogger("driftrec.change_feed")

DEFAULT_MAX_USERS = 100_000


@dataclass(eq=False)
class _AwaitedErasure:
    users: set[str]
    arrived: threading.Event = field(default_factory=threading.Event)


class ChangeFeed:
    """Per-process change counters: a token that moves whenever a user's answers may have.

    `token(user_id)` is None while the feed cannot vouch for completeness (not listening).

    Bounded: at most `max_users` users have a counter of their own (the least recently
    changed go first). Counters come from one clock that only moves forward, and a user
    without a counter gets the highest counter evicted so far (the floor), so a user's token
    never moves back to a value it had before its latest event: an evicted user's old
    remembered rankings can never look current again (a user at the floor may merely miss).

    `on_items_changed(ids)` (ids None: the whole catalogue) is called for item notifications
    and when the feed comes back after notifications may have been lost."""

    def __init__(self, max_users: int = DEFAULT_MAX_USERS) -> None:
        self._lock = threading.Lock()
        self._generation: OrderedDict[str, int] = OrderedDict()
        self._clock = 0  # the last counter handed out
        self._floor = 0  # the highest counter evicted: every user without one has this
        self._epoch = 0  # moves when everything changed (or notifications may have been lost)
        self._live = False
        self.max_users = max(1, max_users)
        self.on_items_changed: Callable[[list[str] | None], None] | None = None
        # Called by `token` before it answers: a cheap check that may find that another
        # process wrote and call `everything_changed` (SQLite's data_version watcher).
        self.guard: Callable[[], None] | None = None
        # Users whose data was erased: the runtime drops what serving remembers of them
        # (None: any user may have been, as after notifications were lost).
        self.on_users_erased: Callable[[list[str] | None], None] | None = None
        # erasures of this process waiting for their notification to come back
        self._awaited: list[_AwaitedErasure] = []

    @property
    def live(self) -> bool:
        return self._live

    def __len__(self) -> int:
        return len(self._generation)

    def token(self, user_id: str) -> tuple[int, int] | None:
        if not self._live:
            return None
        if self.guard is not None:
            self.guard()
        with self._lock:
            return self._epoch, self._generation.get(user_id, self._floor)

    def epoch(self) -> int | None:
        """A counter that moves whenever the catalogue may have changed (and whenever
        notifications may have been lost); None while the feed cannot vouch for it."""
        if not self._live:
            return None
        if self.guard is not None:
            self.guard()
        return self._epoch

    def users_changed(self, user_ids: Iterable[str]) -> None:
        with self._lock:
            generation = self._generation
            for user_id in user_ids:
                self._clock += 1
                generation[user_id] = self._clock
                generation.move_to_end(user_id)
            while len(generation) > self.max_users:
                _, evicted = generation.popitem(last=False)
                self._floor = max(self._floor, evicted)

    def everything_changed(self) -> None:
        with self._lock:
            self._epoch += 1
            self._generation.clear()
            self._floor = self._clock

    def items_changed(self, item_ids: list[str] | None) -> None:
        """Items were inserted or updated: titles in remembered answers, and the catalogue."""
        self.everything_changed()
        if self.on_items_changed is not None:
            self.on_items_changed(item_ids)

    def users_erased(self, user_ids: list[str]) -> None:
        """These users' data was erased: their tokens move (nothing remembered of them can
        look current) and the runtime forgets their entries."""
        self.users_changed(user_ids)
        if self.on_users_erased is not None:
            self.on_users_erased(user_ids)

    @contextmanager
    def awaiting_erasure(self, user_ids: Iterable[str]) -> Iterator[threading.Event | None]:
        """Enter before an erasure commits: the event is set once the erasure's notification
        of all these users has come back through `apply` (the listener), or the feed stops
        or starts (notifications may have been lost: nothing more will arrive to wait for).
        None while the feed is not live (no listener to hear it)."""
        if not self._live:
            yield None
            return
        awaited = _AwaitedErasure(set(user_ids))
        with self._lock:
            self._awaited.append(awaited)
        try:
            yield awaited.arrived
        finally:
            with self._lock:
                self._awaited.remove(awaited)

    def _erasure_arrived(self, user_ids: list[str] | None) -> None:
        with self._lock:
            for awaited in self._awaited:
                if user_ids is None:
                    awaited.users.clear()
                else:
                    awaited.users.difference_update(user_ids)
                if not awaited.users:
                    awaited.arrived.set()

    def apply(self, payload: str) -> None:
        if payload == EVERYTHING:
            self.everything_changed()
        elif payload.startswith(ERASED_PREFIX):
            erased = parse_erased_payload(payload)
            self.users_erased(erased)
            self._erasure_arrived(erased)
        elif payload.startswith(ITEMS_PREFIX):
            self.items_changed(parse_item_payload(payload))
        else:
            self.users_changed(payload.split("\n"))

    def set_live(self, live: bool) -> None:
        if live and not self._live:
            # notifications sent while we were not listening are lost: start afresh (and an
            # erasure among them must not leave the user's entries in memory)
            self.items_changed(None)
            if self.on_users_erased is not None:
                self.on_users_erased(None)
        changed, self._live = live != self._live, live
        if changed:  # what was awaited will not come, or came while nobody listened
            self._erasure_arrived(None)


class SqliteDataVersionWatcher:
    """SQLite's cross-process change check: `PRAGMA data_version` on a connection of its own
    changes whenever any other connection (another process, or this one's pool) commits. Any
    change makes everything the feed vouches for stale (`everything_changed`), so a write by
    any process is seen by the next request of every process. About a microsecond when
    nothing changed (the pragma reads shared memory in WAL mode, no query is planned)."""

    def __init__(self, path: str, feed: ChangeFeed) -> None:
        import sqlite3

        self._connection = sqlite3.connect(path, check_same_thread=False, timeout=30)
        self._lock = threading.Lock()
        self._feed = feed
        self._version = self._read()

    def _read(self) -> int:
        return int(self._connection.execute("PRAGMA data_version").fetchone()[0])

    def check(self) -> None:
        with self._lock:
            version = self._read()
            changed = version != self._version
            self._version = version
        if changed:
            self._feed.everything_changed()

    def close(self) -> None:
        with self._lock:
            self._connection.close()


class PostgresChangeListener:
    """A thread that keeps a `LISTEN` connection open and feeds notifications to a ChangeFeed,
    reconnecting with backoff after errors (the feed is not live meanwhile)."""

    def __init__(self, database_url: str, feed: ChangeFeed, poll_seconds: float = 1.0) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._conninfo = url.render_as_string(hide_password=False)
        self._feed = feed
        self._poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="change-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._feed.set_live(False)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                # keepalives: a silently dropped connection must fail, not hang the feed live
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5,
                                     keepalives=1, keepalives_idle=5, keepalives_interval=2,
                                     keepalives_count=2) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    self._feed.set_live(True)
                    backoff = 0.5
                    while not self._stop.is_set():
                        for notification in connection.notifies(timeout=self._poll_seconds):
                            self._feed.apply(notification.payload)
                        connection.execute("SELECT 1")  # notices a dead connection
            except psycopg.Error as error:
                if self._feed.live:
                    logger.warning("change feed lost its connection (%s); serving checks the "
                                   "database until it is back", error)
                self._feed.set_live(False)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
