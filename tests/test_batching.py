"""Micro-batching of concurrent model calls: right answers, shared passes, errors reach all."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.services.batching import MicroBatcher


def test_each_caller_gets_its_own_result_and_concurrent_calls_share_batches() -> None:
    sizes: list[int] = []

    def slow_square(requests: Sequence[int]) -> list[int]:
        sizes.append(len(requests))
        time.sleep(0.02)  # a forward pass: callers arriving meanwhile queue up
        return [r * r for r in requests]

    batcher = MicroBatcher(slow_square, max_batch=8)
    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(batcher.submit, range(64)))
    assert results == [n * n for n in range(64)]
    assert sum(sizes) == 64 and batcher.requests == 64
    assert max(sizes) <= 8
    assert len(sizes) < 32  # passes were shared: one pass per request would be 64


def test_a_lone_request_runs_at_once_in_its_own_thread() -> None:
    threads: list[str] = []

    def record(requests: Sequence[str]) -> list[str]:
        threads.append(threading.current_thread().name)
        return [r.upper() for r in requests]

    batcher = MicroBatcher(record)
    assert batcher.submit("a") == "A"
    assert batcher.submit("b") == "B"
    assert threads == [threading.current_thread().name] * 2
    assert batcher.batches == 2


def test_a_failed_batch_raises_in_every_caller_and_the_next_batch_still_runs() -> None:
    gate = threading.Event()

    def flaky(requests: Sequence[int]) -> list[int]:
        if -1 in requests:
            gate.wait(1)
            raise ValueError("bad input in batch")
        return list(requests)

    batcher = MicroBatcher(flaky)
    with ThreadPoolExecutor(max_workers=4) as pool:
        failing = pool.submit(batcher.submit, -1)
        time.sleep(0.05)  # the failing batch is running; these two queue behind it
        queued = [pool.submit(batcher.submit, n) for n in (1, 2)]
        gate.set()
        with pytest.raises(ValueError, match="bad input"):
            failing.result(timeout=5)
        assert [f.result(timeout=5) for f in queued] == [1, 2]
    assert batcher.submit(3) == 3


def test_wrong_result_count_is_an_error_not_a_hang() -> None:
    batcher = MicroBatcher(lambda requests: [])
    with pytest.raises(RuntimeError, match="gave 0 results"):
        batcher.submit(1)
