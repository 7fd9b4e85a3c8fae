"""A bounded background queue of drift checks, fed by `POST /events?detect_drift=true`.

Checks run after the batch is committed, one worker thread per process, so ingestion latency
does not include model inference. When the queue is full the check is dropped (and counted):
the next batch or a `GET /drift/{user_id}` checks the user again.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable
from typing import Protocol

logger = logging.getLogger("driftrec.drift_queue")


class QueueObserver(Protocol):
    """What the queue reports (app.core.metrics.Metrics implements it through an adapter)."""

    def depth(self, depth: int) -> None: ...

    def outcome(self, outcome: str, count: int = 1) -> None: ...


class DriftQueue:
    def __init__(self, check: Callable[[str], None], maxsize: int,
                 observer: QueueObserver | None = None) -> None:
        self._check = check
        self._observer = observer
        self._queue: queue.Queue[str | None] = queue.Queue(maxsize=maxsize)
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.done = 0
        self.failed = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="drift-queue", daemon=True)
        self._thread.start()

    def submit(self, user_ids: Iterable[str]) -> int:
        """Queue checks for these users; returns how many were queued (the rest dropped)."""
        queued = 0
        for user_id in user_ids:
            try:
                self._queue.put_nowait(user_id)
                queued += 1
            except queue.Full:
                self.dropped += 1
                self._report("dropped")
        self._report_depth()
        return queued

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def _report(self, outcome: str) -> None:
        if self._observer is not None:
            self._observer.outcome(outcome)

    def _report_depth(self) -> None:
        if self._observer is not None:
            self._observer.depth(self._queue.qsize())

    def join(self) -> None:
        """Wait until every queued check has run (for tests and the batch command)."""
        self._queue.join()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            user_id = self._queue.get()
            try:
                if user_id is None:
                    return
                self._check(user_id)
                self.done += 1
                self._report("done")
            except Exception:  # one user's failure must not stop the worker
                self.failed += 1
                self._report("failed")
                # never the user id: the user may be one just erased (README, Privacy)
                logger.exception("a background drift check failed")
            finally:
                self._report_depth()
                self._queue.task_done()
