"""Stored item embeddings: serving reads them instead of running the encoder over the catalogue.

A served model needs a text embedding of every stored item it has not trained on (cold-start
items: the scorer scores them by their text). Embedding a large catalogue at start-up is the
slow part of a worker's start (MiniLM on a CPU: a few hundred items a second, so an hour for a
million). So embeddings are kept in the store (table item_embeddings), keyed by the encoder's
weights (app.ml.catalogue.encoder_key) and the digest of what each was embedded from:

- `python -m app embed-catalogue [--ray]` (`embed_catalogue`) embeds every item the champion
  has not trained on and the store holds no current row for, in batches, on one process or
  with Ray Data (`map_batches` over an actor pool; app.services.embed_catalogue_ray);
- a worker loading a version (`extend_with_items`) takes the rows that match and embeds only
  the rest, and writes those back, so the next worker (or replica) finds them;
- the catalogue refresher does the same for the items each write brings.

Rows are only an optimisation: a missing, stale or unreadable row costs an encoder call, never
a wrong answer (a write-back that fails is logged and dropped).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.ml.bundle import InterestModelBundle
from app.ml.catalogue import CatalogueItem, encoder_key, item_text, with_new_items
from app.ml.loader import load_registered, registry_client, resolve_version
from app.store import embeddings as stored
from app.store import repository

logger = logging.getLogger("driftrec.embeddings")

DEFAULT_BATCH = 256  # items per encoder call and per transaction of the embedding job


@dataclass(frozen=True, slots=True)
class Extension:
    """A bundle extended with catalogue items, and where their rows came from."""

    bundle: InterestModelBundle
    from_store: int  # rows read from the stored embeddings
    embedded: int  # rows the encoder made here


def extend_with_items(factory: sessionmaker[Session], bundle: InterestModelBundle,
                      items: Sequence[CatalogueItem], replace: bool = False,
                      write_back: bool = True) -> Extension:
    """`with_new_items`, with the rows the store holds for this encoder taken from it and the
    others embedded here (and, with `write_back`, stored for the next worker)."""
    chosen = [i for i in items if replace or bundle.index_of(i.item_id) is None]
    if not chosen:
        return Extension(bundle, 0, 0)
    key = encoder_key(bundle.encoder)
    wanted = {i.item_id: i.digest for i in chosen}
    try:
        with factory() as session:
            found = stored.read_vectors(session, key, wanted)
    except Exception:  # the rows are an optimisation: embed them all instead
        logger.exception("stored embeddings unreadable; embedding %d item(s)", len(chosen))
        found = stored.StoredVectors([], np.zeros((0, 0), np.float32))
    extended = with_new_items(bundle, chosen, replace=replace,
                              embedded=(found.item_ids, found.vectors) if len(found) else None)
    have = set(found.item_ids)
    made = [i for i in chosen if i.item_id not in have]
    if made and write_back:
        write_rows(factory, key, extended, made)
    return Extension(extended, len(found), len(made))


def write_rows(factory: sessionmaker[Session], key: str, bundle: InterestModelBundle,
               items: Sequence[CatalogueItem]) -> int:
    """Store `bundle`'s text rows of these items under `key`; best effort (logged)."""
    rows = bundle.item_text_embeddings
    known = [(i, n) for i in items if (n := bundle.index_of(i.item_id)) is not None]
    try:
        written = 0
        for start in range(0, len(known), 5_000):
            part = known[start:start + 5_000]
            vectors = rows[[n for _, n in part]].float().cpu().numpy()
            written += store_batch(factory, key, [i for i, _ in part], vectors)
        return written
    except Exception:
        logger.exception("could not store %d item embedding(s)", len(items))
        return 0


# ------------------------------------------------------------------ the batch job
@dataclass(frozen=True, slots=True)
class EmbedReport:
    items: int  # stored items
    trained: int  # items the model has trained on (their rows are in the bundle)
    current: int  # items whose stored row was already current
    embedded: int  # rows written now
    seconds: float

    def summary(self) -> str:
        rate = self.embedded / self.seconds if self.seconds > 0 else 0.0
        return (f"embed-catalogue: {self.items} items, {self.trained} trained on, "
                f"{self.current} already stored, {self.embedded} embedded in "
                f"{self.seconds:.1f} s ({rate:,.0f} items/s)")


def items_to_embed(factory: sessionmaker[Session], bundle: InterestModelBundle
                   ) -> tuple[list[CatalogueItem], int, int, int]:
    """The stored items the bundle has not trained on whose stored row is missing or stale,
    and the counts (stored items, trained items, current rows). Streamed from the store."""
    key = encoder_key(bundle.encoder)
    todo: list[CatalogueItem] = []
    total = trained = 0
    with factory() as session:
        digests = stored.stored_digests(session, key)
        for row in repository.catalogue_rows(session):
            total += 1
            if bundle.is_trained(row.item_id):
                trained += 1
                continue
            item = CatalogueItem(row.item_id, item_text(row.title, row.text),
                                 tuple(row.categories or ()))
            if digests.get(item.item_id) != item.digest:
                todo.append(item)
    return todo, total, trained, total - trained - len(todo)


def embed_batches(bundle: InterestModelBundle, items: Sequence[CatalogueItem],
                  batch_size: int = DEFAULT_BATCH) -> Iterator[tuple[list[CatalogueItem],
                                                                     np.ndarray]]:
    """(items, float32[n, D] embeddings) batch by batch: what the job stores."""
    for start in range(0, len(items), batch_size):
        part = list(items[start:start + batch_size])
        yield part, bundle.encoder.embed([i.text for i in part]).float().cpu().numpy()


def store_batch(factory: sessionmaker[Session], key: str, items: Sequence[CatalogueItem],
                vectors: np.ndarray) -> int:
    """One transaction: these items' rows (items deleted meanwhile are left out)."""
    with factory() as session:
        written = stored.write_vectors(session, key, [i.item_id for i in items],
                                       [i.digest for i in items], vectors)
        session.commit()
    return written


def embed_catalogue(factory: sessionmaker[Session], bundle: InterestModelBundle,
                    batch_size: int = DEFAULT_BATCH,
                    on_items: Callable[[int], None] = lambda _: None) -> EmbedReport:
    """Embed and store every item `bundle` has not trained on and the store has no current
    row for, on this process. Resumable: each batch commits, and a rerun skips current rows."""
    started = time.perf_counter()
    todo, total, trained, current = items_to_embed(factory, bundle)
    key = encoder_key(bundle.encoder)
    written = 0
    for part, vectors in embed_batches(bundle, todo, batch_size):
        written += store_batch(factory, key, part, vectors)
        on_items(len(part))
    return EmbedReport(total, trained, current, written, time.perf_counter() - started)


def load_for_embedding(settings: Settings, version: str | None = None
                       ) -> tuple[str, InterestModelBundle]:
    """The registered bundle whose encoder the job runs: `version`, or the champion's. Its
    catalogue is the trained one (the job embeds the rest)."""
    client = registry_client(settings.mlflow_tracking_uri)
    resolved = (client.get_model_version(settings.model_name, version) if version
                else resolve_version(client, settings.model_name, settings.model_alias))
    loaded = load_registered(resolved, settings.mlflow_tracking_uri,
                             settings.model_download_dir, settings.device)
    return str(resolved.version), loaded.bundle
