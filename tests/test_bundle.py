"""The model bundle: save/load round trip, format and completeness checks, scoring methods."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from app.ml.bundle import MODEL_FORMAT, BundleError, InterestModelBundle
from app.ml.encoder import ItemTextEncoder
from app.services.inference import Inference
from tests.bundles import small_bundle

N_ITEMS = 25
HISTORY = [f"m{i}" for i in (3, 7, 1, 12, 4, 9, 20, 2, 15, 6, 11, 0)]
TIMES = [1_000_000_000.0 + 5_000.0 * i for i in range(len(HISTORY))]


@pytest.fixture(scope="module")
def encoder() -> ItemTextEncoder:
    return ItemTextEncoder.pretrained("cpu", num_layers=1)


@pytest.fixture()
def bundle(encoder: ItemTextEncoder) -> InterestModelBundle:
    """A small untrained bundle over 25 items: real modules, random (seeded) weights."""
    return small_bundle(encoder, N_ITEMS, metrics={"ours": {"ndcg@10": 0.01}})


def test_round_trip_gives_identical_scores_drift_and_topics(bundle: InterestModelBundle,
                                                            tmp_path: Path) -> None:
    loaded = InterestModelBundle.load(bundle.save(tmp_path / "b"), "cpu")
    assert loaded.item_ids == bundle.item_ids
    assert loaded.dataset_fingerprint == "test-fingerprint"
    assert loaded.drift == bundle.drift
    assert loaded.topics.names == bundle.topics.names
    assert np.array_equal(loaded.score_next(HISTORY, TIMES), bundle.score_next(HISTORY, TIMES))
    assert np.array_equal(loaded.drift_probabilities(HISTORY, TIMES),
                          bundle.drift_probabilities(HISTORY, TIMES))
    assert torch.equal(loaded.encoder.embed(["a film"]), bundle.encoder.embed(["a film"]))
    loaded.smoke_test()


def test_scores_cover_the_catalogue_and_are_finite_and_deterministic(
        bundle: InterestModelBundle) -> None:
    scores = bundle.score_next(HISTORY, TIMES)
    assert scores.shape == (N_ITEMS,)
    assert np.isfinite(scores).all()
    assert np.array_equal(scores, bundle.score_next(HISTORY, TIMES))
    batch = bundle.score_next_batch([HISTORY, HISTORY[:3]], [TIMES, TIMES[:3]])
    assert batch.shape == (2, N_ITEMS)
    assert torch.allclose(batch[0], torch.from_numpy(scores), atol=1e-5)


def test_history_is_cut_to_max_len_and_unknown_items_are_skipped(
        bundle: InterestModelBundle) -> None:
    recent = bundle.score_next(HISTORY[-8:], TIMES[-8:])  # max_len is 8
    padded = bundle.score_next(["unknown", *HISTORY], [0.0, *TIMES])
    assert np.allclose(bundle.score_next(HISTORY, TIMES), recent, atol=1e-5)
    assert np.allclose(padded, recent, atol=1e-5)


def test_excluding_history_masks_seen_items_only(bundle: InterestModelBundle) -> None:
    scores = bundle.score_next(HISTORY, TIMES, exclude_history=True)
    seen = [bundle.item_ids.index(i) for i in HISTORY]
    assert np.isneginf(scores[seen]).all()
    assert np.isfinite(np.delete(scores, seen)).all()
    top = bundle.recommend(HISTORY, TIMES, k=5)
    assert len(top) == 5 and not set(HISTORY) & {item for item, _ in top}


def test_drift_probabilities_are_per_event_and_causal(bundle: InterestModelBundle) -> None:
    probs = bundle.drift_probabilities(HISTORY, TIMES)
    assert probs.shape == (len(HISTORY),)
    assert ((probs >= 0) & (probs <= 1)).all()
    prefix = bundle.drift_probabilities(HISTORY[:6], TIMES[:6])
    assert np.allclose(probs[:6], prefix, atol=1e-5)


def test_topics_for_known_and_new_items(bundle: InterestModelBundle) -> None:
    assert bundle.topics.names[bundle.item_topic("m3")] == "Sci-Fi"  # rarer than Action
    assert bundle.item_topic("nope") is None
    horror = bundle.topics.names.index("Horror")
    assert bundle.topic_for_new_item("anything", ["Horror"]) == horror
    assert 0 <= bundle.topic_for_new_item("Film 99. Genres: Comedy.") < len(bundle.topics.names)


def test_load_refuses_an_unknown_format(bundle: InterestModelBundle, tmp_path: Path) -> None:
    directory = bundle.save(tmp_path / "b")
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["model_format"] = MODEL_FORMAT + 1
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=f"model_format {MODEL_FORMAT + 1}"):
        InterestModelBundle.load(directory)
    del manifest["model_format"]
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="model_format None"):
        InterestModelBundle.load(directory)


def test_load_refuses_a_missing_artifact(bundle: InterestModelBundle, tmp_path: Path) -> None:
    directory = bundle.save(tmp_path / "b")
    (directory / "drift_head.pt").unlink()
    with pytest.raises(BundleError, match=r"drift_head\.pt"):
        InterestModelBundle.load(directory)
    with pytest.raises(BundleError, match="not a model bundle"):
        InterestModelBundle.load(tmp_path / "empty")


def test_save_refuses_a_non_empty_directory(bundle: InterestModelBundle, tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "other.txt").write_text("keep me")
    with pytest.raises(BundleError, match="not empty"):
        bundle.save(tmp_path / "b")


def test_smoke_test_catches_broken_weights(bundle: InterestModelBundle) -> None:
    bundle.smoke_test()
    with torch.no_grad():
        bundle.sequence_model.item_embedding.weight[5, 0] = math.nan
    with pytest.raises(BundleError, match="finite"):
        bundle.smoke_test()


def test_cold_start_items_join_the_catalogue_with_a_topic(bundle: InterestModelBundle,
                                                          tmp_path: Path) -> None:
    before = bundle.score_next(HISTORY, TIMES)
    original = bundle
    bundle = bundle.with_items(["new1", "m3", "new2"], ["A horror night.", "dup", "A comedy."],
                               [("Horror",), (), ()])
    # the known id m3 is left alone; the original bundle is untouched (copy-on-write)
    assert [bundle.index_of(i) for i in ("new1", "new2")] == [N_ITEMS + 1, N_ITEMS + 2]
    assert original.index_of("new1") is None and len(original.item_ids) == N_ITEMS
    assert np.array_equal(original.score_next(HISTORY, TIMES), before)
    after = bundle.score_next(HISTORY, TIMES)
    assert after.shape == (N_ITEMS + 2,) and np.isfinite(after).all()
    assert np.allclose(after[:N_ITEMS], before, atol=1e-5)
    assert bundle.topics.names[bundle.item_topic("new1")] == "Horror"
    assert bundle.item_topic("new2") is not None
    bundle.smoke_test()
    loaded = InterestModelBundle.load(bundle.save(tmp_path / "b"))
    assert np.array_equal(loaded.score_next(HISTORY, TIMES), after)


def test_load_refuses_a_bundle_written_by_incompatible_model_code(
        bundle: InterestModelBundle, tmp_path: Path) -> None:
    directory = bundle.save(tmp_path / "b")
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["parts"]["scorer"]["config"]["sequence_config"]["a_field_this_code_lacks"] = 1
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="does not match"):
        InterestModelBundle.load(directory)


def test_served_model_batches_score_like_the_bundle_alone(bundle: InterestModelBundle) -> None:
    """Padding histories of different lengths into one batch must not change any score."""
    served = Inference(bundle, max_batch=64)
    rng = np.random.default_rng(0)
    histories = []
    for length in (1, 3, 7, 12, 20):
        items = [bundle.item_ids[i] for i in rng.integers(0, len(bundle.item_ids), length)]
        histories.append((items, [1e9 + 3600.0 * t for t in range(length)]))
    alone = [bundle.score_next(items, times) for items, times in histories]
    traces = [bundle.detect_drift(items, times)[0] for items, times in histories]
    with ThreadPoolExecutor(max_workers=len(histories)) as pool:
        batched = list(pool.map(lambda h: served.score_next(*h), histories * 4))
        drifts = list(pool.map(lambda h: served.replay_drift(*h)[0], histories * 4))
    for n, scores in enumerate(batched):
        np.testing.assert_allclose(scores, alone[n % len(histories)], rtol=1e-5, atol=1e-5)
    for n, probs in enumerate(drifts):
        np.testing.assert_allclose(probs, traces[n % len(histories)], rtol=1e-5, atol=1e-5)
