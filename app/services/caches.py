"""Bounded per-worker memory: what serving remembers per user, and how much of it.

`UserStateCache` keeps one entry per user: the state of the user's events it was computed
from and a few variants of the answer (request options) for that state. A newer state of the
user replaces all of the user's variants (they are superseded), so a user holds at most
`max_variants` answers, and the whole cache holds at most `max_users` users and about
`max_bytes` bytes, estimated per value by the caller's `sizeof` (sizes measured in
tests/test_memory_bounds.py). Least recently used users go first.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Value = TypeVar("Value")

# Per-user bookkeeping (the OrderedDict node, the entry, its variant dict), measured on
# CPython 3.11 and rounded up: added to every user's estimated size.
USER_OVERHEAD_BYTES = 600
VARIANT_OVERHEAD_BYTES = 200  # a variant key tuple and its dict slot


class LruCache:
    """A small thread-safe LRU map by entries (kept for callers that need a plain map)."""

    def __init__(self, maxsize: int = 50_000) -> None:
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.maxsize = maxsize

    def get(self, key: Any) -> Any:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        if self.maxsize <= 0:  # turned off
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            if len(self._data) > self.maxsize:
                self._data.popitem(last=False)


@dataclass(slots=True)
class _UserEntry(Generic[Value]):
    state: Hashable
    variants: dict[Hashable, Value] = field(default_factory=dict)
    sizes: dict[Hashable, int] = field(default_factory=dict)
    nbytes: int = 0


class UserStateCache(Generic[Value]):
    """Thread-safe: answers per (user, state of their events, variant), bounded as above."""

    def __init__(self, max_users: int, max_bytes: int, max_variants: int,
                 sizeof: Callable[[Value], int]) -> None:
        self.max_users = max_users
        self.max_bytes = max_bytes
        self.max_variants = max(1, max_variants)
        self._sizeof = sizeof
        self._data: OrderedDict[str, _UserEntry[Value]] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0  # estimated bytes held
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._data)

    @property
    def variants(self) -> int:
        with self._lock:
            return sum(len(entry.variants) for entry in self._data.values())

    def get(self, user_id: str, state: Hashable, variant: Hashable) -> Value | None:
        with self._lock:
            entry = self._data.get(user_id)
            if entry is None or entry.state != state:
                return None
            value = entry.variants.get(variant)
            if value is not None:
                self._data.move_to_end(user_id)
            return value

    def clear(self) -> None:
        """Drop every entry (notifications of erasures may have been missed)."""
        with self._lock:
            self._data.clear()
            self.nbytes = 0

    def forget(self, user_id: str) -> bool:
        """Drop everything remembered of the user (an erasure); True if there was any."""
        with self._lock:
            entry = self._data.pop(user_id, None)
            if entry is None:
                return False
            self.nbytes -= entry.nbytes
            return True

    def put(self, user_id: str, state: Hashable, variant: Hashable, value: Value) -> None:
        if self.max_users <= 0 or self.max_bytes <= 0:  # turned off
            return
        size = self._sizeof(value) + VARIANT_OVERHEAD_BYTES
        with self._lock:
            entry = self._data.get(user_id)
            if entry is None or entry.state != state:  # new user, or a newer state: replace
                if entry is not None:
                    self.nbytes -= entry.nbytes
                entry = _UserEntry(state)
                entry.nbytes = USER_OVERHEAD_BYTES + sys.getsizeof(user_id)
                self.nbytes += entry.nbytes
                self._data[user_id] = entry
            elif variant in entry.variants:
                old = entry.sizes.pop(variant)
                del entry.variants[variant]
                entry.nbytes -= old
                self.nbytes -= old
            while len(entry.variants) >= self.max_variants:  # the oldest variant goes
                oldest = next(iter(entry.variants))
                del entry.variants[oldest]
                freed = entry.sizes.pop(oldest)
                entry.nbytes -= freed
                self.nbytes -= freed
            entry.variants[variant] = value
            entry.sizes[variant] = size
            entry.nbytes += size
            self.nbytes += size
            self._data.move_to_end(user_id)
            while self._data and (len(self._data) > self.max_users
                                  or self.nbytes > self.max_bytes):
                _, evicted = self._data.popitem(last=False)
                self.nbytes -= evicted.nbytes
                self.evictions += 1


def str_bytes(*texts: str | None) -> int:
    """Memory of these strings (0 for None): exact for CPython str objects."""
    return sum(sys.getsizeof(text) for text in texts if text is not None)
