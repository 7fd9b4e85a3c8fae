"""Micro-batching of concurrent model calls.

Under load, a worker's request threads each want one small forward pass; on a CPU, running
them one by one costs a full pass each, mostly per-operation overhead. `MicroBatcher` runs
whatever requests are waiting as one batch instead. It has no thread of its own and no timer:
the first caller to find the model idle runs the batch (its own request and every request that
queued while the previous batch ran), so a lone request pays no extra latency and a crowd of
requests shares passes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Request = TypeVar("Request")
Result = TypeVar("Result")


@dataclass(slots=True)
class _Pending(Generic[Request, Result]):
    request: Request
    wake: threading.Event = field(default_factory=threading.Event)
    finished: bool = False  # else, when woken: this thread now leads the next batch
    result: Result | None = None
    error: BaseException | None = None


class MicroBatcher(Generic[Request, Result]):
    """Calls `run_batch(requests) -> results` (same length, same order) for queued requests.

    `submit` blocks until its own result is ready and returns it, or raises what the batch
    raised. Thread-safe; meant for the threads a sync FastAPI endpoint runs in. The leader runs
    one batch (its own request is in it, being first in the queue), then hands the lead to the
    oldest waiter, so no caller serves other callers' batches for longer than its own.
    """

    def __init__(self, run_batch: Callable[[Sequence[Request]], Sequence[Result]],
                 max_batch: int = 64) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: list[_Pending[Request, Result]] = []
        self._running = False  # invariant: not running => queue empty
        self.batches = 0  # batches run and requests served: for tests and metrics
        self.requests = 0

    def submit(self, request: Request) -> Result:
        pending: _Pending[Request, Result] = _Pending(request)
        with self._lock:
            self._queue.append(pending)
            leads = not self._running
            self._running = True
        if not leads:
            pending.wake.wait()
        if not pending.finished:
            self._run_one_batch()
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[return-value]

    def _run_one_batch(self) -> None:
        with self._lock:
            batch = self._queue[: self.max_batch]
            del self._queue[: self.max_batch]
            self.batches += 1
            self.requests += len(batch)
        try:
            results = self._run_batch([p.request for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} gave {len(results)} results")
            for pending, result in zip(batch, results, strict=True):
                pending.result = result
        except BaseException as error:  # every waiter learns of it; none hangs
            for pending in batch:
                pending.error = error
        with self._lock:
            for pending in batch:
                pending.finished = True
                pending.wake.set()
            if self._queue:
                self._queue[0].wake.set()  # not finished: it leads the next batch
            else:
                self._running = False
