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

logger = logging.getLogger("driftrec.drift_queue")


class DriftQueue:
    def __init__(self, check: Callable[[str], None], maxsize: int) -> None:
        self._check = check
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
        return queued

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
            except Exception:  # one user's failure must not stop the worker
                self.failed += 1
                logger.exception("drift check failed for user %s", user_id)
            finally:
                self._queue.task_done()
