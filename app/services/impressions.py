"""Impressions: what each recommendation response showed, recorded off the request path.

`ImpressionLog.record` puts an impression in a bounded in-memory queue and returns at once:
no I/O, and no wait when the queue is full, where the impression is dropped and counted. One
background thread per worker takes up to `batch_size` impressions at a time (waiting at most
`flush_seconds` for more to arrive) and writes them in one transaction
(`app.store.impressions.write_impressions`). A slow or unreachable database makes the queue
fill and impressions drop; requests never wait for it. A failed batch is tried once more,
then dropped and counted. Impressions still queued at shutdown get one last write.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from app.store import impressions as store
from app.store.db import transaction
from app.store.impressions import ImpressionRow

logger = logging.getLogger("driftrec.impressions")

RETRY_SECONDS = 0.5  # before the second try of a failed batch


class ImpressionObserver(Protocol):
    """What the log reports (app.core.metrics.Metrics implements it through an adapter)."""

    def written(self, count: int) -> None: ...

    def dropped(self, reason: str, count: int) -> None: ...

    def depth(self, depth: int) -> None: ...


class ImpressionLog:
    def __init__(self, factory: sessionmaker[Session], maxsize: int, batch_size: int = 500,
                 flush_seconds: float = 1.0, observer: ImpressionObserver | None = None
                 ) -> None:
        if maxsize <= 0:
            raise ValueError("an impression log needs a queue of at least one entry")
        self._factory = factory
        self._queue: queue.Queue[ImpressionRow] = queue.Queue(maxsize=maxsize)
        self.batch_size = max(1, batch_size)
        self.flush_seconds = flush_seconds
        self._observer = observer
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._idle = threading.Condition()  # guards the counts below
        self._outstanding = 0  # queued or being written: not yet written or dropped
        self.written = 0
        self.dropped = 0

    # ------------------------------------------------------------------ the request side
    def record(self, row: ImpressionRow) -> bool:
        """Queue an impression; False when it was dropped (the queue is full)."""
        with self._idle:
            self._outstanding += 1
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            self._settle(0, {"queue_full": 1}, 1)
            return False
        return True

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    # ------------------------------------------------------------------ the writer
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="impression-writer",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the writer after one last write of what is queued (bounded by `timeout`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued was written or dropped (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._outstanding:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.05))
        return True

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch:
                self._write(batch)
            elif self._stop.is_set():
                return

    def _take(self) -> list[ImpressionRow]:
        """Up to `batch_size` impressions: the first waited for up to `flush_seconds`, then
        whatever arrives within `flush_seconds` of it."""
        try:
            first = self._queue.get(timeout=self.flush_seconds)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + (0.0 if self._stop.is_set() else self.flush_seconds)
        while len(batch) < self.batch_size:
            left = deadline - time.monotonic()
            try:
                row = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            batch.append(row)
        self._report()
        return batch

    def _write(self, batch: list[ImpressionRow]) -> None:
        written, dropped = 0, {}
        for attempt in (1, 2):
            try:
                with transaction(self._factory) as session:
                    outcome = store.write_impressions(session, batch)
            except Exception as error:  # the database is away, slow, or a user was erased
                if attempt == 2 or self._stop.is_set():
                    logger.warning("dropped %d impression(s): %s: %s", len(batch),
                                   type(error).__name__, error)
                    dropped = {"write_failed": len(batch)}
                    break
                self._stop.wait(RETRY_SECONDS)
                continue
            written = outcome.written
            dropped = {"unknown_user": outcome.unknown_user} if outcome.unknown_user else {}
            break
        self._settle(written, dropped, len(batch))

    def _settle(self, written: int, dropped: dict[str, int], handled: int) -> None:
        """Count what became of `handled` impressions: `written`, or `dropped` by reason (an
        impression whose recommendation id was already stored is neither)."""
        with self._idle:
            self.written += written
            self.dropped += sum(dropped.values())
            self._outstanding -= handled
            self._idle.notify_all()
        if self._observer is not None:
            if written:
                self._observer.written(written)
            for reason, count in dropped.items():
                self._observer.dropped(reason, count)

    def _report(self) -> None:
        if self._observer is not None:
            self._observer.depth(self._queue.qsize())
