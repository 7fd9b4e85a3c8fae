"""Top-k indexes (app.ml.topk) and candidate ranking: an index with candidates covering the
catalogue gives exactly the exact path's answer, through the domain, the served model and the
API; faiss finds the true top 10 on clustered data; faiss stays optional."""

from __future__ import annotations

import builtins
import importlib.util
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.domain import ranking
from app.domain.drift import ChangePoint
from app.main import create_app
from app.ml.bundle import InterestModelBundle
from app.ml.encoder import ItemTextEncoder
from app.ml.topk import (
    ExactTopK,
    TopKUnavailable,
    best_rows,
    build_topk_index,
    candidates,
    recall_at_k,
)
from app.services.recommender import Recommender
from app.services.remembered import DriftFinding
from app.services.served_model import ServedModel
from app.services.served_topk import TopKSettingError, build_served_topk
from app.services.user_history import History
from app.store.db import make_engine, make_session_factory
from tests.bundles import small_bundle
from tests.conftest import TinyModel, tiny_model_database, tiny_users_data
from training.data.importer import import_movielens

N_ITEMS = 120
HISTORY = [f"m{i}" for i in (3, 7, 1, 12, 4, 9, 20, 2, 15, 6, 11, 0)]
TIMES = [1_000_000_000.0 + 5_000.0 * i for i in range(len(HISTORY))]


def clustered(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    """float32[rows, dim] around 50 centres, norms spread (like a learned item table)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dim))
    points = centres[rng.integers(0, 50, rows)] + 0.3 * rng.standard_normal((rows, dim))
    return (points * rng.lognormal(0.0, 0.2, (rows, 1))).astype(np.float32)


# ---------------------------------------------------------------------------- indexes
def test_exact_topk_equals_full_scoring() -> None:
    vectors = clustered(2_000, 16)
    queries = clustered(7, 16, seed=1)
    rows, scores = ExactTopK.build(vectors).search(queries, 25)
    full = queries @ vectors.T
    for b in range(len(queries)):
        order = np.lexsort((np.arange(len(vectors)), -full[b]))[:25]
        assert np.array_equal(rows[b], order)
        np.testing.assert_allclose(scores[b], full[b, order], rtol=1e-5)


def test_best_rows_breaks_ties_by_the_lower_row() -> None:
    rows, scores = best_rows(np.asarray([[1.0, 3.0, 3.0, 0.0, 3.0]], np.float32), 2)
    assert rows.tolist() == [[1, 2]] and scores.tolist() == [[3.0, 3.0]]
    rows, _ = best_rows(np.zeros((1, 3), np.float32), 10)  # more asked than there are
    assert rows.tolist() == [[0, 1, 2]]


def test_faiss_recall_at_10_on_clustered_data_at_the_default_parameters() -> None:
    pytest.importorskip("faiss")
    vectors = clustered(20_000, 32)
    queries = clustered(200, 32, seed=1)
    exact, _ = ExactTopK.build(vectors).search(queries, 10)
    index = build_topk_index("faiss", vectors)
    assert index.rows == 20_000
    assert recall_at_k(index, queries, exact, 10) >= 0.95
    assert recall_at_k(ExactTopK.build(vectors), queries, exact, 10) == 1.0


def test_unknown_index_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown top-k index 'annoy'"):
        build_topk_index("annoy", clustered(10, 4))


# ------------------------------------------------------------------ candidate ranking
def _exact_and_candidate_rankings(vectors: np.ndarray, index: Any, query: np.ndarray,
                                  topics: np.ndarray, k: int, **options: Any
                                  ) -> tuple[ranking.Ranking, ranking.Ranking]:
    exact = ranking.rank(vectors @ query, topics, k, pad_index=None, **options)
    rows, scores = candidates(index, query, vectors, len(vectors))
    return exact, ranking.rank_subset(rows, scores, topics, k, **options)


@pytest.mark.parametrize("kind", ["exact", "faiss"])
def test_candidates_covering_the_catalogue_rank_as_the_exact_path(kind: str) -> None:
    if kind == "faiss":
        pytest.importorskip("faiss")
    vectors = clustered(3_000, 16)
    topics = np.random.default_rng(2).integers(-1, 6, len(vectors))
    index = build_topk_index(kind, vectors)
    after = np.asarray([0.05, 0.6, 0.0, 0.3, 0.05, 0.0])
    for seed in range(5):
        query = clustered(1, 16, seed=10 + seed)[0]
        banned = np.argsort(-(vectors @ query))[: 3 + seed]  # the best ones: exclusions bite
        for options in ({}, {"exclude": banned},
                        {"exclude": banned, "post_change_weights": after, "strength": 1.5},
                        {"post_change_weights": {1: 2.0, 5: 1.0}, "strength": 1.0}):
            exact, found = _exact_and_candidate_rankings(vectors, index, query, topics, 20,
                                                         **options)
            assert np.array_equal(found.indices, exact.indices)
            np.testing.assert_allclose(found.scores, exact.scores, rtol=1e-5)
            assert found.drift_aware == exact.drift_aware
    # a tilt over the candidates of a real index changes the ranking, as over everything
    assert exact.drift_aware


def test_rows_appended_after_the_build_are_scanned_and_every_candidate_rescored() -> None:
    vectors = clustered(1_000, 8)
    index = ExactTopK.build(vectors[:900])  # built before the last 100 rows came
    query = clustered(1, 8, seed=5)[0]
    current = vectors.copy()
    current[950] = 10 * query  # a new row that beats every other
    current[10] = -current[10]  # an old row re-embedded since the build
    rows, scores = candidates(index, query, current, 50)
    assert 950 in rows and len(rows) <= 100
    np.testing.assert_allclose(scores, current[rows] @ query, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(rows) > 0)
    # a zero query (no known event) scores every row 0: the lowest rows, as the exact path
    rows, scores = candidates(index, np.zeros(8, np.float32), current, 5)
    assert rows.tolist() == [0, 1, 2, 3, 4] and not scores.any()


# --------------------------------------------------------------------- served model
@pytest.fixture(scope="module")
def encoder() -> ItemTextEncoder:
    return ItemTextEncoder.pretrained("cpu", num_layers=1)


@pytest.fixture(scope="module")
def bundle(encoder: ItemTextEncoder) -> InterestModelBundle:
    """A small untrained bundle over 120 items: real modules, random (seeded) weights."""
    return small_bundle(encoder, N_ITEMS)


def _served(bundle: InterestModelBundle, topk: Any = None) -> Recommender:
    return Recommender(ServedModel(bundle=bundle, name="m", version="1", alias="champion",
                                   run_id=None, device="cpu", loaded_at=datetime.now(UTC),
                                   topk=topk))


def _drift(bundle: InterestModelBundle) -> DriftFinding:
    after = np.zeros(len(bundle.topics.names))
    after[: min(2, len(after))] = [0.7, 0.3][: len(after)]
    history = History([""] * len(HISTORY), HISTORY, TIMES, [None] * len(HISTORY), len(HISTORY))
    return DriftFinding(history, np.zeros(len(HISTORY)), ChangePoint(5, 0.9, "abrupt"), 5,
                        np.zeros(len(after)), after)


def _ranked(model: Recommender, finding: DriftFinding | None, **options: Any) -> Any:
    return model.rank_items(item_ids=HISTORY, timestamps=TIMES, k=15,
                                exclude=set(HISTORY[:6]), strength=1.0, finding=finding,
                                candidates=10_000, **options)


def test_the_query_vector_is_what_the_scores_are_inner_products_with(
        bundle: InterestModelBundle) -> None:
    query = bundle.query_vectors_batch([HISTORY, []], [TIMES, []])
    scores = bundle.score_next_batch([HISTORY, []], [TIMES, []])
    np.testing.assert_allclose(scores.numpy(), query.numpy() @ bundle.item_vectors().T,
                               rtol=1e-5, atol=1e-6)
    assert not query[1].any() and not scores[1].any()


def test_served_rankings_with_an_index_equal_the_exact_path(
        bundle: InterestModelBundle, encoder: ItemTextEncoder) -> None:
    pytest.importorskip("faiss")
    exact = _served(bundle)
    indexed = _served(bundle, build_topk_index("faiss", bundle.item_vectors()))
    for finding in (None, _drift(bundle)):
        assert _ranked(indexed, finding) == _ranked(exact, finding)
    # cold-start items appended by a catalogue refresh: the index (kept by the swap's
    # `replace`) does not hold them; they are scanned exactly
    grown = bundle.with_items(["new-1", "new-2"], ["Film new. Genres: Horror.",
                                                   "Another new film about space."])
    grown_indexed = indexed.with_catalogue(grown, indexed.model.catalogue,
                                           indexed.model.availability)
    assert grown_indexed.topk is indexed.topk and grown_indexed.topk is not None
    assert grown_indexed.topk.rows == N_ITEMS < len(grown.item_ids)
    for finding in (None, _drift(grown)):
        assert _ranked(grown_indexed, finding) == _ranked(_served(grown), finding)


# ------------------------------------------------------------------------ settings
def test_build_served_topk_follows_the_setting(bundle: InterestModelBundle) -> None:
    assert build_served_topk(Settings(topk_index="exact"), bundle) is None
    pytest.importorskip("faiss")
    index = build_served_topk(Settings(topk_index="faiss", topk_nprobe=4), bundle)
    assert index is not None and index.rows == N_ITEMS


def test_faiss_chosen_but_missing_is_a_clear_error(bundle: InterestModelBundle,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    real_import, real_find = builtins.__import__, importlib.util.find_spec

    def no_faiss(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "faiss" else real_find(name, *a))
    with pytest.raises(ValueError, match="DRIFTREC_TOPK_INDEX=faiss needs faiss"):
        Settings(topk_index="faiss")
    settings = Settings.model_construct(topk_index="faiss", topk_nprobe=32, topk_threads=1)
    with pytest.raises(TopKSettingError, match="DRIFTREC_TOPK_INDEX=faiss needs faiss") as error:
        build_served_topk(settings, bundle)
    assert isinstance(error.value.__cause__, TopKUnavailable)
    assert "driftrec[ann]" in str(error.value)


# ----------------------------------------------------------------------------- API
@pytest.fixture(scope="module")
def two_apps(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[TestClient, TestClient, list[str]]]:
    """The tiny champion served twice from one store: exact, and with a faiss index whose
    candidates cover the catalogue. (exact client, indexed client, some users)."""
    pytest.importorskip("faiss")
    root: Path = tmp_path_factory.mktemp("topk")
    _, split, subset = tiny_users_data()
    with tiny_model_database(tiny_model, root, "topk") as (settings, _):
        engine = make_engine(settings.database_url)
        import_movielens(subset, make_session_factory(engine), settings, progress=False)
        engine.dispose()
        indexed = settings.model_copy(update={"topk_index": "faiss",
                                              "topk_candidates": 100_000})
        with TestClient(create_app(settings)) as exact_client, \
                TestClient(create_app(indexed)) as indexed_client:
            yield exact_client, indexed_client, [case.user_id for case in split.train[:6]]


def _items(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return response.json()["items"]


def _same_items(found: list[dict[str, Any]], exact: list[dict[str, Any]]) -> None:
    assert [i["item_id"] for i in found] == [i["item_id"] for i in exact]
    assert [i["topic"] for i in found] == [i["topic"] for i in exact]
    assert [i["because"] for i in found] == [i["because"] for i in exact]
    np.testing.assert_allclose([i["score"] for i in found], [i["score"] for i in exact],
                               rtol=1e-5)


def test_recommend_with_a_covering_index_equals_the_exact_setting(
        two_apps: tuple[TestClient, TestClient, list[str]]) -> None:
    exact, indexed, users = two_apps
    assert indexed.app.state.runtime.models.current.topk is not None  # type: ignore[attr-defined]
    assert exact.app.state.runtime.models.current.topk is None  # type: ignore[attr-defined]
    for user in users:
        for params in ({"k": 10}, {"k": 25, "exclude_seen": False},
                       {"k": 10, "drift_aware": False}):
            _same_items(_items(indexed.get(f"/recommend/{user}", params=params)),
                        _items(exact.get(f"/recommend/{user}", params=params)))
    history = [i["item_id"] for i in _items(exact.get(f"/recommend/{users[0]}"))][:6]
    body = {"recent_item_ids": history, "k": 12}
    _same_items(_items(indexed.post("/recommend", json=body)),
                _items(exact.post("/recommend", json=body)))


def test_concurrent_requests_share_query_passes_and_find_the_same_candidates(
        bundle: InterestModelBundle) -> None:
    pytest.importorskip("faiss")
    served = _served(bundle, build_topk_index("faiss", bundle.item_vectors()))
    histories = [(HISTORY[:n], TIMES[:n]) for n in (1, 4, 8, 12)]
    topk = served.model.topk
    assert topk is not None
    alone = [served.inference.score_candidates(topk, items, times, None, 30)
             for items, times in histories]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(lambda h: served.inference.score_candidates(topk, *h, None, 30),
                                 histories * 4))
    for n, (rows, scores) in enumerate(together):
        assert np.array_equal(rows, alone[n % len(histories)][0])
        np.testing.assert_allclose(scores, alone[n % len(histories)][1], rtol=1e-5, atol=1e-6)
    assert served.inference.querier.requests == len(histories) * 5
