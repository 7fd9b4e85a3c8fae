"""Tables derived from one served bundle on first use (unit item rows, CPU item vectors).

Built at most once per bundle, under a lock, by whichever request needs one first; a new
bundle (another version, a catalogue swap that adds rows) gets a new `LazyTables`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np


class LazyTables:
    def __init__(self) -> None:
        self._tables: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def get(self, name: str, build: Callable[[], np.ndarray]) -> np.ndarray:
        table = self._tables.get(name)
        if table is None:
            with self._lock:
                table = self._tables.get(name)
                if table is None:
                    table = self._tables[name] = build()
        return table
