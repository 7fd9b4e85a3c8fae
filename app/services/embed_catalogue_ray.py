"""The embedding job on Ray (`python -m app embed-catalogue --ray [--address ADDR]`).

The same rows as the single-process job (app.services.item_embeddings.embed_catalogue): the
driver lists the items to embed (those the model has not trained on, without a current row),
Ray Data splits them into blocks, and an actor pool (`map_batches`) embeds them: each actor
loads the version's encoder once (on a GPU when the cluster has one) and stores each batch in
one transaction through the store module. Resumable the same way: every stored batch stays, a
rerun embeds only what is missing.

`ray` is imported here only, inside the functions (the optional `ray` extra).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.ml.bundle import InterestModelBundle
from app.ml.catalogue import CatalogueItem, encoder_key
from app.services.item_embeddings import (
    DEFAULT_BATCH,
    EmbedReport,
    items_to_embed,
    load_for_embedding,
    store_batch,
)
from app.store.db import make_engine, make_session_factory


class EmbedActor:
    """One actor of the pool: an engine of its own and the version's encoder, loaded once."""

    def __init__(self, settings: Settings, version: str, key: str) -> None:
        small_pool = {} if settings.database_url.startswith("sqlite") else {
            "pool_size": 1, "max_overflow": 0}
        self.engine = make_engine(settings.database_url, **small_pool)
        self.factory = make_session_factory(self.engine)
        loaded_version, self.bundle = load_for_embedding(settings, version)
        if encoder_key(self.bundle.encoder) != key:  # the same weights as the driver's
            raise RuntimeError(f"v{loaded_version}'s encoder differs from the driver's")
        self.key = key

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [CatalogueItem(str(i), str(t), tuple(str(c) for c in cats))
                 for i, t, cats in zip(batch["item_id"], batch["text"], batch["categories"],
                                       strict=True)]
        vectors = self.bundle.encoder.embed([i.text for i in items]).float().cpu().numpy()
        written = store_batch(self.factory, self.key, items, vectors)
        return {"items": np.array([len(items)]), "written": np.array([written])}


def embed_with_ray(settings: Settings, factory: sessionmaker[Session], version: str,
                   bundle: InterestModelBundle, *, batch_size: int = DEFAULT_BATCH,
                   actors: int | None = None,
                   on_items: Callable[[int], None] = lambda _: None,
                   on_total: Callable[[int], None] = lambda _: None) -> EmbedReport:
    """Embed and store what `bundle` (version `version`, loaded on the driver to list the
    work) lacks, on the initialised Ray cluster (app.services.drift_scan_ray.init_ray)."""
    import ray

    started = time.perf_counter()
    todo, total, trained, current = items_to_embed(factory, bundle)
    on_total(len(todo))
    if not todo:
        return EmbedReport(total, trained, current, 0, time.perf_counter() - started)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 1)), int(resources.get("GPU", 0))
    table = pa.table({"item_id": [i.item_id for i in todo], "text": [i.text for i in todo],
                      "categories": [list(i.categories) for i in todo]})
    # Blocks cut here (no repartition task to schedule): several per actor, so the driver
    # sees batches come back (progress) and an interruption loses little.
    blocks = max(1, min(-(-len(todo) // batch_size), 4 * max(1, int(cpus))))
    size = -(-len(todo) // blocks)
    dataset = ray.data.from_arrow([table.slice(start, size)
                                   for start in range(0, len(todo), size)])
    if gpus:
        pool, compute = {"num_gpus": 1}, gpus if actors is None else min(actors, gpus)
    else:  # leave a quarter CPU for Ray Data's own tasks, or nothing runs (a deadlock)
        count = actors or max(1, int(cpus))
        pool, compute = {"num_cpus": min(1.0, max(0.25, (cpus - 0.25) / count))}, count
    embedded = dataset.map_batches(
        EmbedActor, batch_size=batch_size, concurrency=compute,
        fn_constructor_kwargs={"settings": settings, "version": version,
                               "key": encoder_key(bundle.encoder)}, **pool)
    written = 0
    for row in embedded.iter_rows():
        written += int(row["written"])
        on_items(int(row["items"]))
    return EmbedReport(total, trained, current, written, time.perf_counter() - started)
