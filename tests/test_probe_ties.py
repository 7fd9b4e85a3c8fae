"""Equal scores are ranked by item id, not by catalogue row: two workers whose catalogues hold
the same items in different row orders (each appends items in the order it learned of them)
give the same ranking, on the exact path, the candidate (index) path and similar items. Before,
ties went to the lower row, and two workers shared 40 of a user's top 100."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from app.domain import ranking, similarity
from app.ml.bundle import InterestModelBundle
from app.ml.encoder import ItemTextEncoder
from app.ml.topk import build_topk_index
from app.services import recommender
from app.services.recommender import Recommender
from app.services.served_model import ServedModel
from tests.bundles import small_bundle

HISTORY = [f"m{i}" for i in (3, 7, 1, 12, 4, 9, 20, 2)]
TIMES = [1_000_000_000.0 + 5_000.0 * i for i in range(len(HISTORY))]
TWINS = [f"twin-{c}" for c in "abcde"]  # items with one text: equal scores everywhere
TWIN_TEXT = "Film twin. Genres: Horror."
COLD = [*TWINS, *(f"cold-{n:02d}" for n in range(20))]


# ------------------------------------------------------------------------ the domain
def test_id_order_is_each_rows_rank_among_the_sorted_ids() -> None:
    assert ranking.id_order(["c", "a", "b"]).tolist() == [2, 0, 1]
    assert ranking.id_order([]).tolist() == []


def test_ties_go_to_the_lower_key_whatever_the_row_order() -> None:
    ids = ["x", "d", "b", "a", "c"]  # rows in arrival order
    scores = np.asarray([0.1, 0.5, 0.5, 0.9, 0.5])
    key = ranking.id_order(ids)
    for k in (1, 2, 3, 4, 5):
        indices, values = ranking.top_k(scores, k, pad_index=None, tie_key=key)
        assert [ids[i] for i in indices] == ["a", "b", "c", "d", "x"][:k]
        assert values.tolist() == [0.9, 0.5, 0.5, 0.5, 0.1][:k]
    # the same items in another row order rank the same
    permuted = [3, 2, 4, 1, 0]
    other_ids, other_scores = [ids[p] for p in permuted], scores[permuted]
    indices, _ = ranking.top_k(other_scores, 3, pad_index=None,
                               tie_key=ranking.id_order(other_ids))
    assert [other_ids[i] for i in indices] == ["a", "b", "c"]
    # with a padding entry the key has one for it too; without a key: the lower index
    padded = np.concatenate([[-np.inf], scores])
    indices, _ = ranking.top_k(padded, 2, tie_key=np.concatenate([[-1], key]))
    assert [ids[i - 1] for i in indices] == ["a", "b"]
    assert ranking.top_k(scores, 2, pad_index=None)[0].tolist() == [3, 1]


def test_rank_rank_subset_and_nearest_take_the_key() -> None:
    ids = ["e", "c", "a", "d", "b", "f"]
    scores = np.asarray([0.2, 0.7, 0.7, 0.7, 0.3, 0.7])
    topics = np.asarray([0, 1, 0, 1, 0, 1])
    key = ranking.id_order(ids)
    full = ranking.rank(scores, topics, 3, pad_index=None, tie_key=key)
    assert [ids[i] for i in full.indices] == ["a", "c", "d"]
    rows = np.arange(len(ids))
    subset = ranking.rank_subset(rows, scores, topics, 3, tie_key=key)
    assert subset.indices.tolist() == full.indices.tolist()
    tilted = ranking.rank_subset(rows[1:], scores[1:], topics, 2, {1: 1.0}, 1.0,
                                 exclude=[1], tie_key=key)
    assert [ids[i] for i in tilted.indices] == ["d", "f"]
    unit = similarity.unit_rows(np.asarray([[1, 0], [1, 0], [0, 1], [1, 0], [1, 0], [0, 1]],
                                           np.float32))
    positions, sims = similarity.nearest(unit, 0, 2, tie_key=key)
    assert [ids[p] for p in positions] == ["b", "c"] and sims.tolist() == [1.0, 1.0]


# ------------------------------------------------------------------------ served
@pytest.fixture(scope="module")
def grown() -> tuple[InterestModelBundle, InterestModelBundle]:
    """One small bundle grown by the same cold items in two arrival orders (two workers)."""
    encoder = ItemTextEncoder.pretrained("cpu", num_layers=1)
    base = small_bundle(encoder, 40)
    texts = [TWIN_TEXT if item in TWINS else f"Film {item}. Genres: Comedy."
             for item in COLD]
    first = base.with_items(COLD, texts)
    second = base.with_items(COLD[::-1], texts[::-1])
    assert first.item_ids[40:] == COLD and second.item_ids[40:] == COLD[::-1]
    return first, second


def _served(bundle: InterestModelBundle, scores: dict[str, float], topk: Any = None
            ) -> Recommender:
    """A served version whose scores are `scores` by item id, whatever the row: float32
    matrix products give equal rows scores that differ in the last bit by the row's place,
    so the ties this test needs are made exact here."""
    served = Recommender(ServedModel(bundle=bundle, name="m", version="1", alias="champion",
                                     run_id=None, device="cpu", loaded_at=datetime.now(UTC),
                                     topk=topk))
    by_row = np.asarray([scores[item] for item in bundle.item_ids], np.float32)
    inference: Any = served.inference
    found = inference.score_candidates
    inference.score_next = lambda *args, **kwargs: by_row.copy()

    def score_candidates(*args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        rows, _ = found(*args, **kwargs)
        return rows, by_row[rows]

    inference.score_candidates = score_candidates
    # one exact unit row per text (the twins share one): their similarities tie exactly
    texts = bundle.text_vectors()
    _, row_of_text = np.unique(texts.round(4), axis=0, return_inverse=True)
    unit = np.eye(int(row_of_text.max()) + 1, dtype=np.float32)[row_of_text.reshape(-1)]
    inference.tables.get("unit:text", lambda: unit)
    return served


def _ids(model: Recommender, k: int) -> list[str]:
    chosen, _, _ = model.rank_items(item_ids=HISTORY, timestamps=TIMES, k=k, exclude=set(),
                                    strength=1.0, finding=None, candidates=10_000)
    return [item_id for item_id, _, _ in chosen]


def test_two_workers_with_other_row_orders_rank_ties_alike(
        grown: tuple[InterestModelBundle, InterestModelBundle],
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = grown[0]
    # the model's scores, rounded: many items tie, the twins among them
    model_scores = first.score_next(HISTORY, TIMES)
    scores = {item: round(float(s), 1) for item, s in zip(first.item_ids, model_scores,
                                                           strict=True)}
    for twin in TWINS:
        scores[twin] = scores[TWINS[0]]
    assert len(set(scores.values())) < len(scores) // 3  # ties everywhere
    everything = len(first.item_ids)
    for topk in (None, "exact"):  # the exact path; the candidate path of a top-k index
        a, b = (_served(bundle, scores, None if topk is None
                        else build_topk_index(topk, bundle.item_vectors()))
                for bundle in grown)
        whole = _ids(a, everything)
        assert _ids(b, everything) == whole
        assert whole == sorted(scores, key=lambda item: (-scores[item], item))
        for k in range(1, everything, 7):  # cuts inside tied runs
            assert _ids(a, k) == _ids(b, k) == whole[:k]
    # similar items: the other twins are equally (fully) similar to a twin
    monkeypatch.setattr(recommender.repository, "item_titles", lambda session, ids: {})
    similar = [[item["item_id"] for item in _served(bundle, scores).similar(
        None, "twin-c", 2)["items"]] for bundle in grown]  # type: ignore[arg-type]
    assert similar == [["twin-a", "twin-b"]] * 2
