"""SQLite's change check (issue 16): the feed is live on SQLite; `data_version` sees other
connections' commits, so remembered answers are never trusted past another process's write."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from app.services.change_feed import ChangeFeed, SqliteDataVersionWatcher


def test_a_commit_by_another_connection_makes_every_token_move(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    other = sqlite3.connect(path)
    other.execute("PRAGMA journal_mode=WAL")
    other.execute("CREATE TABLE t (x INTEGER)")
    other.commit()
    feed = ChangeFeed()
    watcher = SqliteDataVersionWatcher(str(path), feed)
    feed.guard = watcher.check
    feed.set_live(True)
    before = feed.token("u1"), feed.token("u2")
    assert (feed.token("u1"), feed.token("u2")) == before  # nothing written: unchanged
    other.execute("INSERT INTO t VALUES (1)")
    other.commit()  # another process's write: every user's token moves
    after = feed.token("u1"), feed.token("u2")
    assert after[0] != before[0] and after[1] != before[1]
    assert (feed.token("u1"), feed.token("u2")) == after  # and stays until the next write
    feed.users_changed(["u1"])  # this process's own write: that user's token moves
    assert feed.token("u1") != after[0] and feed.token("u2") == after[1]
    watcher.close()
    other.close()
