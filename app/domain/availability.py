"""Which catalogue items may be recommended now: retired items and availability windows.

An item is available when it is active and ``available_from <= now < available_until``
(either bound may be absent). Pure functions over ids and epoch seconds; the served model
keeps one immutable `Availability` per catalogue state (copy-on-write, like its rows).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

Window = tuple[float | None, float | None]  # [from, until) in epoch seconds


def in_window(window: Window, now: float) -> bool:
    start, end = window
    return (start is None or start <= now) and (end is None or now < end)


def is_available(active: bool, window: Window, now: float) -> bool:
    return active and in_window(window, now)


@dataclass(frozen=True, slots=True)
class Availability:
    """Items that are retired (inactive or deleted from the store) and items with a window.

    Items named in neither are available. Both maps hold only the exceptions, so a catalogue
    of active items costs nothing."""

    retired: frozenset[str] = frozenset()
    windows: Mapping[str, Window] = field(default_factory=dict)
    # retired because the store no longer holds them: no route answers for them as items
    deleted: frozenset[str] = frozenset()

    def unavailable(self, now: float) -> frozenset[str]:
        """Items not to recommend at `now`."""
        closed = [item for item, window in self.windows.items() if not in_window(window, now)]
        return self.retired.union(closed) if closed else self.retired

    def closed_windows(self, now: float) -> tuple[str, ...]:
        """Windowed items outside their window at `now` (sorted): part of the key of a
        remembered ranking, which must not outlive a window opening or closing."""
        return tuple(sorted(item for item, window in self.windows.items()
                            if not in_window(window, now)))

    def available(self, item_id: str, now: float) -> bool:
        if item_id in self.retired:
            return False
        window = self.windows.get(item_id)
        return window is None or in_window(window, now)

    def updated(self, states: Mapping[str, tuple[bool, Window]],
                removed: Iterable[str] = ()) -> Availability:
        """A copy with these items' states (active, window) replaced; `removed` items (no
        longer in the store) are retired."""
        retired = set(self.retired)
        windows = dict(self.windows)
        deleted = set(self.deleted)
        for item, (active, window) in states.items():
            retired.discard(item)
            deleted.discard(item)
            windows.pop(item, None)
            if not active:
                retired.add(item)
            if window != (None, None):
                windows[item] = window
        for item in removed:
            windows.pop(item, None)
            retired.add(item)
            deleted.add(item)
        return Availability(frozenset(retired), windows, frozenset(deleted))
