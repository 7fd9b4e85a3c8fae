"""Keeps each worker's served catalogue in step with the store, off the request path.

`POST /items` commits and returns. The items it wrote reach every worker: on PostgreSQL
through the change feed (a NOTIFY listing their ids, delivered to every process at commit),
and in the process that took the write also directly (SQLite has no NOTIFY). Each worker's
refresher then, in one background thread (the encoder's fast tokenizer is not thread-safe):

- re-reads those items from the store (so whatever committed last is what gets served, even
  after concurrent upserts of one id in other workers),
- embeds items the served model lacks and re-embeds items whose text or categories changed
  (a trained item keeps its learned ID embedding; its text row and topic are replaced),
  batch by batch (`catalogue_embed_batch` items, taken from every waiting write in turn, so
  a small upsert is embedded in the next batch even behind a large one),
- carries each item's lifecycle (retired, availability window) into the served model's
  availability (a deleted item is retired: its row stays for the histories naming it),
- and swaps in a copy of the served model with those rows, copy-on-write, as a reload does:
  requests in flight finish on the model they started with. A challenger served beside the
  champion gets the same, with its own encoder.

A reload that swaps in another version, and a change feed that (re)connects after it may
have missed notifications, trigger a full pass: the whole catalogue is compared with what the
served rows were embedded from (a digest per item), and only differences are embedded.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable

from sqlalchemy.orm import Session, sessionmaker

from app.core.metrics import Metrics
from app.domain.availability import Availability, Window
from app.ml.catalogue import CatalogueItem
from app.services.item_embeddings import extend_with_items
from app.services.model_manager import ModelManager, read_catalogue
from app.services.recommender import Recommender

logger = logging.getLogger("driftrec.catalogue")

RETRY_SECONDS = 1.0  # after a failed pass (e.g. the database is away)


class CatalogueRefresher:
    def __init__(self, manager: ModelManager, factory: sessionmaker[Session],
                 batch_size: int = 64, metrics: Metrics | None = None) -> None:
        self._manager = manager
        self._factory = factory
        self.batch_size = max(1, batch_size)
        self._metrics = metrics
        self._cond = threading.Condition()
        # Ids waiting, and the writes they came in: a batch takes ids from every waiting write
        # in turn, so a small upsert is embedded in the next batch even behind a large one.
        self._pending: set[str] = set()
        self._writes: deque[deque[str]] = deque()
        self._full = False  # a full pass is due
        self._busy = 0  # ids (or 1 for a full pass) being worked on
        self._stopping = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.embedded = 0  # items embedded or re-embedded, for tests
        self.failures = 0

    # ------------------------------------------------------------------ producers
    def submit(self, item_ids: Iterable[str] | None) -> None:
        """These items were written (None: any item may have been). Returns at once."""
        with self._cond:
            self._submit_locked(None if item_ids is None else list(item_ids))
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        return len(self._pending) + self._busy

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until nothing is pending (tests; the batch scripts). False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._pending and not self._full and not self._busy, timeout)

    # ------------------------------------------------------------------ the thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="catalogue-refresher",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or self._pending or self._full)
                if self._stopping:
                    return
                wanted: list[str] | None
                if self._full:
                    self._full, wanted, self._busy = False, None, 1
                else:
                    wanted = self._take_batch()
                    self._busy = len(wanted)
            failed = False
            try:
                self.refresh(wanted)
            except Exception:  # keep the thread; try again shortly
                failed = True
                self.failures += 1
                if self._metrics is not None:
                    self._metrics.catalogue_failures.inc()
                logger.exception("catalogue refresh failed; retrying in %.0f s", RETRY_SECONDS)
            with self._cond:
                self._busy = 0
                if failed:
                    self._submit_locked(wanted)
                self._report()
                self._cond.notify_all()
            if failed:
                self._stop.wait(RETRY_SECONDS)

    def _submit_locked(self, item_ids: list[str] | None) -> None:
        if item_ids is None:
            self._full = True
        else:
            fresh = deque(i for i in dict.fromkeys(item_ids) if i not in self._pending)
            if fresh:
                self._pending.update(fresh)
                self._writes.append(fresh)
        self._report()

    def _take_batch(self) -> list[str]:
        """Up to `batch_size` ids, taken from the waiting writes in turn (round robin)."""
        batch: list[str] = []
        while self._writes and len(batch) < self.batch_size:
            write = self._writes.popleft()
            batch.append(write.popleft())
            if write:
                self._writes.append(write)
        self._pending.difference_update(batch)
        return batch

    def _report(self) -> None:
        if self._metrics is not None:
            self._metrics.catalogue_pending.set(len(self._pending) + self._busy)

    # ------------------------------------------------------------------ one pass
    def refresh(self, item_ids: list[str] | None) -> int:
        """Bring these items (None: the whole catalogue) of every served version (the
        champion, and a challenger) up to date with the store; returns how many rows were
        embedded. Called by the thread (or a test)."""
        served_models = self._manager.served_models()
        if not served_models:
            return 0  # the first load reads the whole catalogue itself
        items, states = read_catalogue(self._factory, item_ids)
        return sum(self._refresh_model(served, item_ids, items, states)
                   for served in served_models)

    def _refresh_model(self, version: Recommender, item_ids: list[str] | None,
                       items: list[CatalogueItem], states: dict[str, tuple[bool, Window]]
                       ) -> int:
        served = version.model
        # Retired and windowed items: from what was read; an item the store no longer holds
        # (deleted) is retired, its row stays (other histories may name it).
        wanted = set(served.catalogue) if item_ids is None else set(item_ids)
        removed = [i for i in wanted - set(states) if served.bundle.index_of(i) is not None]
        availability = (Availability() if item_ids is None
                        else served.availability).updated(states, removed)
        changed = [i for i in items if served.catalogue.get(i.item_id) != i.digest]
        if not changed:
            if availability != served.availability and not self._manager.swap_catalogue(
                    version, served.bundle, served.catalogue, availability):
                with self._cond:
                    self._submit_locked(list(wanted))
            return 0
        bundle = served.bundle
        # A trained item the store did not hold when the model loaded: its trained row stays
        # (it is what the model learned); only later changes of it are re-embedded.
        adopted = [i for i in changed
                   if i.item_id not in served.catalogue and bundle.index_of(i.item_id)]
        adopted_ids = {i.item_id for i in adopted}
        embed = [i for i in changed if i.item_id not in adopted_ids]
        if item_ids is None and len(embed) > self.batch_size:
            # a full pass found many: record the adopted ones now, embed the rest in batches
            with self._cond:
                self._submit_locked([i.item_id for i in embed])
            embed = []
            changed = adopted
        catalogue = {**served.catalogue, **{i.item_id: i.digest for i in changed}}
        # rows another worker (or the embedding job) stored are read, not embedded again
        extended = (extend_with_items(self._factory, bundle, embed, replace=True).bundle
                    if embed else bundle)
        if not self._manager.swap_catalogue(version, extended, catalogue, availability):
            # another version was swapped in meanwhile: compare these again with that one
            with self._cond:
                self._submit_locked([i.item_id for i in changed])
            return 0
        self.embedded += len(embed)
        if self._metrics is not None and embed:
            self._metrics.catalogue_embedded.inc(len(embed))
            self._metrics.catalogue_batch.observe(len(embed))
        if embed:
            logger.info("catalogue: embedded %d new or changed item(s) for v%s", len(embed),
                        served.version)
        return len(embed)
