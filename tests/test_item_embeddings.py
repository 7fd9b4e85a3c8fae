"""Stored item embeddings (issue 17): the embedding job, on one process and on Ray, and
workers that read the rows at start-up instead of running the encoder.

The Ray test runs a local cluster of 2 CPUs; not skipped (`ray` is in the `ray` extra, which
`make test` installs).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.ml.bundle import InterestModelBundle
from app.ml.catalogue import CatalogueItem, encoder_key
from app.ml.loader import load_bundle
from app.services import item_embeddings
from app.services.model_manager import ModelManager, read_catalogue
from app.store import embeddings as stored
from app.store import repository
from app.store.db import make_engine, make_session_factory
from app.store.models import ItemEmbedding
from tests.conftest import TinyModel, scratch_pg_database, tiny_model_database, tiny_store

KEY = "k" * 40


def _items(factory: sessionmaker[Session], n: int) -> list[CatalogueItem]:
    with factory() as session:
        repository.upsert_items(session, [{"item_id": f"i{k}", "title": f"Item {k}",
                                           "text": f"text {k}", "categories": ["A"],
                                           "attributes": {}} for k in range(n)])
        session.commit()
    return [CatalogueItem(f"i{k}", f"text {k}", ("A",)) for k in range(n)]


def test_rows_are_read_only_while_their_digest_matches(factory: sessionmaker[Session]) -> None:
    items = _items(factory, 4)
    vectors = np.arange(4 * 3, dtype=np.float32).reshape(4, 3)
    with factory() as session:
        written = stored.write_vectors(session, KEY, [i.item_id for i in items],
                                       [i.digest for i in items], vectors)
        session.commit()
    assert written == 4
    wanted = {i.item_id: i.digest for i in items}
    wanted["i2"] = CatalogueItem("i2", "changed text", ("A",)).digest  # its text changed
    with factory() as session:
        found = stored.read_vectors(session, KEY, wanted)
        assert sorted(found.item_ids) == ["i0", "i1", "i3"]
        for item_id, row in zip(found.item_ids, found.vectors, strict=True):
            assert np.array_equal(row, vectors[int(item_id[1:])])
        assert len(stored.read_vectors(session, "another encoder", wanted)) == 0
        # a second write replaces (idempotent retries), an item that is gone is left out
        again = stored.write_vectors(session, KEY, ["i0", "gone"], [items[0].digest, b"x" * 16],
                                     np.ones((2, 3), np.float32))
        session.commit()
        assert again == 1
        assert np.array_equal(stored.read_vectors(session, KEY, {"i0": items[0].digest}
                                                  ).vectors[0], np.ones(3, np.float32))
        assert stored.count_vectors(session, KEY) == 4
        assert stored.delete_other_encoders(session, keep=["another encoder"]) == 4
        session.commit()
        assert stored.count_vectors(session) == 0


def test_deleting_an_item_deletes_its_rows(factory: sessionmaker[Session]) -> None:
    from app.store.catalogue import delete_item

    items = _items(factory, 2)
    with factory() as session:
        stored.write_vectors(session, KEY, [i.item_id for i in items],
                             [i.digest for i in items], np.zeros((2, 3), np.float32))
        session.commit()
        delete_item(session, "i0")
        session.commit()
        assert list(session.scalars(select(ItemEmbedding.item_id))) == ["i1"]


class CountingLoader:
    """Loads bundles as serving does and counts the texts their encoders are asked for."""

    def __init__(self) -> None:
        self.texts = 0

    def __call__(self, path: Path, device: str) -> InterestModelBundle:
        bundle = load_bundle(path, device)
        embed = bundle.encoder.embed

        def counted(texts: list[str], batch_size: int = 64) -> object:
            self.texts += len(texts)
            return embed(texts, batch_size)

        bundle.encoder.embed = counted  # type: ignore[method-assign]
        return bundle


SMOKE_TEST_TEXTS = 1  # the load's self-check embeds one text
NEW_ITEMS = 120  # items added after training: the cold-start rows a worker needs


def _new_items(factory: sessionmaker[Session]) -> None:
    """Items the tiny model never saw (it trained on the whole ml-100k catalogue)."""
    genres = ["Drama", "Comedy", "Sci-Fi", "Horror"]
    with factory() as session:
        repository.upsert_items(session, [
            {"item_id": f"new{k}", "title": f"New film {k}",
             "text": f"A {genres[k % 4].lower()} about {k} strangers", "attributes": {},
             "categories": [genres[k % 4]] if k % 3 else []} for k in range(NEW_ITEMS)])
        session.commit()


@pytest.fixture
def store_with_model(tiny_model: TinyModel, tmp_path: Path
                     ) -> Iterator[tuple[Settings, sessionmaker[Session]]]:
    with tiny_model_database(tiny_model, tmp_path, "embeddings") as (settings, _):
        tiny_store(settings.database_url)
        engine = make_engine(settings.database_url)
        try:
            factory = make_session_factory(engine)
            _new_items(factory)
            yield settings, factory
        finally:
            engine.dispose()


def test_a_worker_reads_the_stored_rows_instead_of_embedding(
        store_with_model: tuple[Settings, sessionmaker[Session]]) -> None:
    settings, factory = store_with_model
    _, bundle = item_embeddings.load_for_embedding(settings)
    report = item_embeddings.embed_catalogue(factory, bundle, batch_size=128)
    cold = report.items - report.trained
    assert report.embedded == cold == NEW_ITEMS
    assert item_embeddings.embed_catalogue(factory, bundle).embedded == 0  # all current

    # Without rows: a worker embeds every cold-start item. With them: none, same answers.
    loader = CountingLoader()
    manager = ModelManager(settings, factory, loader, with_challenger=False)
    manager.reload()
    assert loader.texts == SMOKE_TEST_TEXTS
    served = manager.current.bundle
    items, _ = read_catalogue(factory)
    fresh = bundle.with_items([i.item_id for i in items], [i.text for i in items],
                              [i.categories for i in items])
    assert served.item_ids == fresh.item_ids
    assert np.allclose(served.text_vectors(), fresh.text_vectors(), atol=1e-5)
    assert np.array_equal(served.topics.item_topics, fresh.topics.item_topics)
    history = served.item_ids[:15]
    times = [1e9 + 60.0 * n for n in range(len(history))]
    scores = served.score_next(history, times)
    assert np.allclose(scores, fresh.score_next(history, times), atol=1e-4)
    assert np.isfinite(scores[[served.index_of(f"new{k}") - 1 for k in range(NEW_ITEMS)]]).all()

    # An item whose text changed is embedded again (its stale row is not used) and stored.
    changed = next(i for i in items if not bundle.is_trained(i.item_id))
    with factory() as session:
        repository.upsert_items(session, [{"item_id": changed.item_id, "title": "New title",
                                           "text": "an entirely new description",
                                           "categories": [], "attributes": {}}])
        session.commit()
    again = CountingLoader()
    manager = ModelManager(settings, factory, again, with_challenger=False)
    manager.reload()
    assert again.texts == SMOKE_TEST_TEXTS + 1
    assert item_embeddings.embed_catalogue(factory, bundle).embedded == 0  # stored back
    with factory() as session:
        assert stored.count_vectors(session, encoder_key(bundle.encoder)) == cold


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    import ray

    from app.services.drift_scan_ray import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


def test_the_ray_job_stores_the_rows_the_single_process_job_stores(
        store_with_model: tuple[Settings, sessionmaker[Session]], ray_cluster: None) -> None:
    from app.services.embed_catalogue_ray import embed_with_ray

    settings, factory = store_with_model
    version, bundle = item_embeddings.load_for_embedding(settings)
    key = encoder_key(bundle.encoder)
    with scratch_pg_database("embeddings_ref") as reference_url:
        engine = make_engine(reference_url)
        try:
            tiny_store(reference_url)
            reference = make_session_factory(engine)
            _new_items(reference)
            expected = item_embeddings.embed_catalogue(reference, bundle)
            progress: list[int] = []
            report = embed_with_ray(settings, factory, version, bundle, batch_size=64,
                                    on_items=progress.append)
            assert report.embedded == expected.embedded == sum(progress) == NEW_ITEMS
            assert len(progress) > 1  # several batches, counted as they came back
            with reference() as a, factory() as b:
                want = stored.stored_digests(a, key)
                assert stored.stored_digests(b, key) == want
                ours = stored.read_vectors(a, key, want)
                theirs = stored.read_vectors(b, key, want)
            order = np.argsort(theirs.item_ids)
            assert sorted(ours.item_ids) == [theirs.item_ids[n] for n in order]
            assert np.allclose(ours.vectors[np.argsort(ours.item_ids)], theirs.vectors[order],
                               atol=1e-5)
            # resumable: a second run finds every row current
            assert embed_with_ray(settings, factory, version, bundle).embedded == 0
        finally:
            engine.dispose()


def test_the_command_embeds_reports_and_prunes(
        store_with_model: tuple[Settings, sessionmaker[Session]]) -> None:
    import os
    import subprocess
    import sys

    from app.core.config import PROJECT_ROOT

    settings, factory = store_with_model
    with factory() as session:  # rows of an encoder no version has any more
        stored.write_vectors(session, "an old encoder", ["new0"], [b"x" * 16],
                             np.zeros((1, 384), np.float32))
        session.commit()
    env = {**os.environ, "DRIFTREC_DATABASE_URL": settings.database_url,
           "DRIFTREC_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
           "DRIFTREC_MLFLOW_ARTIFACT_ROOT": settings.mlflow_artifact_root,
           "DRIFTREC_DATA_CACHE_DIR": str(settings.data_cache_dir)}
    done = subprocess.run([sys.executable, "-m", "app", "embed-catalogue", "--no-progress",
                           "--prune"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{NEW_ITEMS} embedded" in done.stdout
    assert "1 rows of other encoders deleted" in done.stdout
    with factory() as session:
        assert stored.count_vectors(session) == NEW_ITEMS
