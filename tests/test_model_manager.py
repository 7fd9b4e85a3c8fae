"""The served model's small LRU cache (drift findings per user and last event)."""

from __future__ import annotations

import threading

from app.services.caches import LruCache


def test_lru_keeps_the_most_recently_used() -> None:
    cache = LruCache(maxsize=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)


def test_lru_is_safe_under_threads() -> None:
    cache = LruCache(maxsize=100)

    def writer(base: int) -> None:
        for i in range(1000):
            cache.put((base, i), i)
            cache.get((base, i // 2))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache._data) == 100
