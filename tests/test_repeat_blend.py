"""The ranker's repeat-aware blend: the domain function, the bundle that serves it (full scan,
top-k candidates, save/load, new items) and its fit on validation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from app.domain.repeat import RepeatBlend, basket_ages, blend_scores, repeat_strength
from app.ml.bundle import InterestModelBundle
from app.ml.encoder import ItemTextEncoder
from tests.bundles import small_bundle
from training.blend import blended, fit_blend, log_popularity
from training.data.sequences import UserSequence, leave_one_out
from training.evaluate import all_metrics, score_sequences

BLEND = RepeatBlend(tau=2.0, repeat_weight=3.0, popularity_weight=0.5, window=6)


def test_basket_ages_count_distinct_later_timestamps() -> None:
    assert basket_ages(np.array([1.0, 1.0, 2.0, 5.0, 5.0])).tolist() == [2, 2, 1, 0, 0]
    assert basket_ages(np.zeros(0)).tolist() == []


def test_repeat_strength_reads_the_window_and_ignores_order_inside_a_basket() -> None:
    indices = np.array([7, 3, 3, 9, 3, 0])  # 0: an unknown item, skipped
    times = np.array([0.0, 1.0, 2.0, 2.0, 3.0, 3.0])
    items, strength = repeat_strength(indices, times, tau=1.0, window=5)  # 7 is outside
    assert items.tolist() == [3, 9]
    # item 3: ages 2 (t=1), 1 (t=2), 0 (t=3); item 9: age 1
    assert strength == pytest.approx([math.exp(-2) + math.exp(-1) + 1.0, math.exp(-1)])
    swapped = np.array([7, 3, 9, 3, 3, 0])  # the t=2 basket in the other order
    assert repeat_strength(swapped, times, 1.0, 5)[1] == pytest.approx(strength)
    _, plain = repeat_strength(indices, times, math.inf, 5)
    assert plain.tolist() == [3.0, 1.0]


def test_blend_on_candidate_rows_equals_the_full_blend() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=20).astype(np.float32)
    popularity = np.log1p(rng.integers(0, 50, size=20)).astype(np.float32)
    indices, times = np.array([4, 5, 4, 12]), np.array([0.0, 1.0, 2.0, 2.0])
    full = blend_scores(scores.copy(), indices, times, BLEND, popularity)
    rows = np.array([0, 3, 7, 11, 19])  # positions 3 and 11 are items 4 and 12
    part = blend_scores(scores[rows].copy(), indices, times, BLEND, popularity, rows)
    assert part == pytest.approx(full[rows])
    assert full[3] > scores[3] + 0.5 * popularity[3]  # item 4 was bought: lifted
    assert full[0] == pytest.approx(scores[0] + 0.5 * popularity[0])
    alone = RepeatBlend(2.0, 1.0, 0.01, 6, model_weight=0.0)
    ranked = blend_scores(scores.copy(), indices, times, alone, popularity)
    assert set(np.argsort(-ranked)[:3]) == {3, 4, 11}  # without the model: the bought items


def test_blend_round_trips_through_json() -> None:
    for blend in (BLEND, RepeatBlend(math.inf, 1.0, 0.0, 200, model_weight=0.0)):
        assert RepeatBlend.from_json(blend.to_json()) == blend
    assert not RepeatBlend(1.0, 0.0, 0.0, 10).active


@pytest.fixture(scope="module")
def encoder() -> ItemTextEncoder:
    return ItemTextEncoder.pretrained(torch.device("cpu"), num_layers=1, max_length=16)


def blended_bundle(encoder: ItemTextEncoder, n_items: int = 30) -> InterestModelBundle:
    popularity = np.log1p(np.arange(n_items, dtype=np.float32) % 7)
    return small_bundle(encoder, n_items, blend=BLEND, log_popularity=popularity)


def test_the_bundle_serves_the_blend_and_keeps_it_when_saved(encoder: ItemTextEncoder,
                                                             tmp_path: Path) -> None:
    bundle = blended_bundle(encoder)
    plain = small_bundle(encoder, 30)
    history, times = ["m3", "m8", "m3", "m20"], [10.0, 20.0, 20.0, 30.0]
    indices = np.array([bundle.index_of(i) for i in history])
    expected = blend_scores(plain.score_next(history, times).copy(), indices,
                            np.array(times), BLEND, bundle.log_popularity)
    assert bundle.score_next(history, times) == pytest.approx(expected, abs=1e-5)
    loaded = InterestModelBundle.load(bundle.save(tmp_path / "b"))
    assert loaded.blend == BLEND
    assert loaded.score_next(history, times) == pytest.approx(expected, abs=1e-5)
    assert loaded.history_window == max(BLEND.window, plain.sequence_model.max_len)
    grown = loaded.with_items(["new"], ["a brand new film"])
    assert grown.log_popularity is not None and len(grown.log_popularity) == 31
    assert grown.log_popularity[-1] == 0.0
    assert grown.score_next(history, times).shape == (31,)


def test_top_k_candidates_are_scored_as_the_full_scan_and_hold_the_repeats(
        encoder: ItemTextEncoder) -> None:
    bundle = blended_bundle(encoder)
    history, times = ["m3", "m8", "m3", "m20"], [10.0, 20.0, 20.0, 30.0]
    full = bundle.score_next(history, times)
    vectors = bundle.item_vectors()
    query = bundle.query_vectors_batch([history], [times])[0].numpy()
    far = np.argsort(vectors @ query)[:2]  # rows the index would never find
    rows, scores = bundle.blend_candidates(np.sort(far), query, vectors, history, times)
    assert {3, 8, 20} <= set(rows.tolist())  # the bought items joined the candidates
    assert scores == pytest.approx(full[rows], abs=1e-5)


def _repeat_split(n_users: int, repeats: bool) -> tuple[object, int]:
    """Users who keep buying their own few staples (repeats) or never buy twice."""
    rng = np.random.default_rng(1)
    n_items = 60
    sequences = []
    for user in range(n_users):
        if repeats:
            staples = rng.choice(np.arange(1, n_items + 1), size=4, replace=False)
            items = rng.choice(staples, size=14)
        else:
            items = rng.choice(np.arange(1, n_items + 1), size=14, replace=False)
        sequences.append(UserSequence(str(user), items.astype(np.int64),
                                      np.arange(14, dtype=np.float64) * 100.0))
    return leave_one_out(sequences, True), n_items


@pytest.mark.parametrize("repeats", [True, False])
def test_the_fit_never_loses_to_the_model_alone_on_validation(repeats: bool) -> None:
    from app.ml.sequence import SequenceInterestModel, SequenceModelConfig

    split, n_items = _repeat_split(60, repeats)
    torch.manual_seed(0)
    model = SequenceInterestModel(SequenceModelConfig(hidden_size=8, num_layers=1, ff_size=16,
                                                      max_len=8), n_items, 4)
    model.set_item_text_embeddings(torch.zeros(n_items + 1, 4))
    model.eval()
    fit = fit_blend(model, split, n_items, torch.device("cpu"), tau=10.0)
    alone = fit.grid["1,0,0"]
    assert fit.metrics["val"]["ndcg@10"] >= alone
    inputs = split.valid_inputs()
    scores = score_sequences(model, inputs, torch.device("cpu"), at=split.valid_times)
    again = all_metrics(blended(scores, inputs, fit.blend, log_popularity(split, n_items)),
                        inputs, split.valid_items)
    assert again["ndcg@10"] == pytest.approx(fit.metrics["val"]["ndcg@10"])
    if repeats:  # an untrained model against staples: the blend must lean on them
        assert fit.blend.repeat_weight > 0 and fit.metrics["val"]["ndcg@10"] > alone + 0.1
    disabled = fit_blend(model, split, n_items, torch.device("cpu"), enabled=False)
    assert not disabled.blend.active and disabled.metrics["val"]["ndcg@10"] == alone

