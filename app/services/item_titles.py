"""Item titles for responses, remembered while the change feed vouches that no item changed.

Every response that names items carries their titles; reading them from the store was a query
per response. An item upsert moves the feed's epoch (this process's before it acknowledges,
other processes' when its notification arrives), and so does anything after which the feed
cannot vouch for the catalogue (a lost listener, another SQLite process's commit): titles are
then read again. While the feed is not live, every call reads the store, as before.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from itertools import islice

from sqlalchemy.orm import Session

from app.services.change_feed import ChangeFeed
from app.store import repository


class ItemTitles:
    """At most `max_items` titles (the oldest go first; 0: none kept), for one feed epoch.
    An id the store does not hold is remembered as having no title."""

    def __init__(self, feed: ChangeFeed | None, max_items: int) -> None:
        self._feed = feed
        self._max = max_items
        self._lock = threading.Lock()
        self._epoch: int | None = None
        self._titles: dict[str, str | None] = {}

    def __len__(self) -> int:
        return len(self._titles)

    def of(self, session: Session, item_ids: Iterable[str]) -> dict[str, str]:
        """The titles of those of these items the store holds."""
        wanted = set(item_ids)
        epoch = None if self._feed is None or not self._max else self._feed.epoch()
        if epoch is None:
            return repository.item_titles(session, wanted)
        with self._lock:
            if self._epoch != epoch:
                self._titles.clear()
                self._epoch = epoch
            known = {i: self._titles[i] for i in wanted if i in self._titles}
        missing = wanted.difference(known)
        if missing:
            read = repository.item_titles(session, missing)
            known.update((i, read.get(i)) for i in missing)
            self._keep(epoch, {i: read.get(i) for i in missing})
        return {i: title for i, title in known.items() if title is not None}

    def _keep(self, epoch: int, titles: dict[str, str | None]) -> None:
        """Remember titles read in `epoch`, unless the epoch moved meanwhile (an item may
        have changed after they were read)."""
        with self._lock:
            if self._feed is None or self._epoch != epoch or self._feed.epoch() != epoch:
                return
            self._titles.update(titles)
            excess = len(self._titles) - self._max
            for item_id in list(islice(self._titles, max(excess, 0))):
                del self._titles[item_id]
