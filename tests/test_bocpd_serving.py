"""The ``bocpd`` drift part served: its part file, its decisions (the change placed where the
detector locates it, with its kind), its cost per event, and, for every drift kind, the
served path (Recommender.find_drift through the per-user states) deciding what a replay of the
same window decides: feature-gru and bocpd carried forward incrementally, embedding-shift
replayed."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch

from app.domain.bocpd import BocpdConfig, BucketThresholds
from app.ml.bundle import DriftSettings, InterestModelBundle
from app.ml.drift_bocpd import BocpdDrift, BocpdEngine
from app.ml.drift_head import N_FEATURES, DriftHead
from app.ml.drift_shift import N_SHIFT_FEATURES, EmbeddingShiftHead
from app.ml.incremental import drift_window_start, engine_for
from app.ml.parts import EventTrace, get_kind, load_part, save_part
from app.ml.sequence import SequenceInterestModel, SequenceModelConfig
from app.ml.topics import topics_from_categories
from app.services.recommender import Recommender
from app.services.served_model import ServedModel
from app.services.user_history import History
from training.drift.bocpd_fit import DriftCatalogue, item_channels, pca, topic_space

N_ITEMS = 30
TEXT_DIM = 24
GENRES = [("a",), ("b",), ("c",), ("a", "d")]
CATEGORIES = [GENRES[i % len(GENRES)] for i in range(N_ITEMS)]


class _StubEncoder:
    dim = TEXT_DIM

    def eval(self) -> _StubEncoder:
        return self


def _scorer(seed: int = 0) -> SequenceInterestModel:
    torch.manual_seed(seed)
    config = SequenceModelConfig(hidden_size=16, num_layers=1, ff_size=32, max_len=8)
    model = SequenceInterestModel(config, N_ITEMS, TEXT_DIM)
    # item texts in the genre of each item, so the topics and components agree
    base = torch.nn.functional.normalize(torch.randn(4, TEXT_DIM), dim=1)
    text = torch.stack([base[i % 4] + 0.3 * torch.randn(TEXT_DIM) for i in range(N_ITEMS)])
    model.set_item_text_embeddings(torch.cat([torch.zeros(1, TEXT_DIM),
                                              torch.nn.functional.normalize(text, dim=1)]))
    return model.eval()


def _bocpd(scorer: SequenceInterestModel, categories: list[tuple[str, ...]] | None = None
           ) -> BocpdDrift:
    text = scorer.item_text.numpy()
    space = topic_space(text, DriftCatalogue(list(categories if categories is not None
                                                  else CATEGORIES)), clusters=4)
    channels = item_channels(text, space, pca(text, np.arange(1, N_ITEMS + 1), 2), 2)
    config = BocpdConfig(hazard_lambda=20.0, max_run=30, min_age=3, max_age=10,
                         n_topics=len(space.names), use_vector=True, vector_dim=2, use_gap=True)
    return BocpdDrift(config, BucketThresholds((10,), (-1.0, 0.0)), channels, space.names)


def _bundle(detector: object, scorer: SequenceInterestModel) -> InterestModelBundle:
    return InterestModelBundle(
        encoder=_StubEncoder(), sequence_model=scorer, drift_detector=detector,  # type: ignore[arg-type]
        drift=DriftSettings(threshold=0.5, min_events=3, cooldown=2, max_events=30),
        item_ids=[f"m{i}" for i in range(N_ITEMS)],
        topics=topics_from_categories(scorer.item_text[1:].numpy(), CATEGORIES),
        dataset_fingerprint="test")


def _history(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Model rows drawn from one genre, then from another (a change), with gaps."""
    first, second = rng.choice(4, 2, replace=False)
    cut = int(rng.integers(5, max(6, n - 3)))
    genre = np.where(np.arange(n) < cut, first, second)
    rows = 1 + 4 * rng.integers(0, N_ITEMS // 4, n) + genre
    times = 1e9 + np.cumsum(rng.choice([5.0, 60.0, 3_600.0, 86_400.0 * 3], size=n))
    return np.minimum(rows, N_ITEMS).astype(np.int64), times


# ------------------------------------------------------------------------------ the part
def test_the_bocpd_part_saves_loads_and_steps_like_its_batch_trace(tmp_path: Path) -> None:
    scorer = _scorer()
    part = _bocpd(scorer)
    assert get_kind("drift", "bocpd").cls is BocpdDrift
    loaded = load_part("drift", save_part("drift", part, tmp_path), tmp_path,
                       torch.device("cpu"))
    rng = np.random.default_rng(0)
    rows, times = _history(rng, 40)
    trace = loaded.traces(scorer, torch.from_numpy(rows)[None], torch.from_numpy(times)[None])
    engine = engine_for(scorer, loaded)
    assert isinstance(engine, BocpdEngine)
    state = engine.start([(rows[:7], times[:7])])[0]
    for t in range(7, 40, 5):
        state = engine.extend([(state, rows[t:t + 5], times[t:t + 5])])[0]
    stepped = state.trace()
    # the same loop from the same state: equal bit for bit, not to a tolerance
    assert np.array_equal(stepped.probabilities, trace.probabilities[0].numpy())
    assert trace.located is not None and trace.kinds is not None
    assert np.array_equal(stepped.located, trace.located[0].numpy())
    assert np.array_equal(stepped.kinds, trace.kinds[0].numpy())
    assert np.all(stepped.located <= np.arange(40))  # a change is placed at or before its alarm
    assert state.bocpd.nbytes < 64 * 1024  # bounded by max_run, not the catalogue


def test_a_cold_start_row_reads_its_nearest_topic_and_its_projected_text() -> None:
    scorer = _scorer()
    part = _bocpd(scorer)
    # a copy of item row 3's text appended as a new row (what with_items does)
    scorer.set_item_text_embeddings(torch.cat([scorer.item_text, scorer.item_text[3:4]]))
    topics, vector = part._row(scorer, N_ITEMS + 1)
    stored_topics, stored_vector = part._row(scorer, 3)
    assert topics[0] in stored_topics
    assert vector is not None and stored_vector is not None
    np.testing.assert_allclose(vector, stored_vector, atol=1e-6)


def test_decisions_place_the_change_where_the_detector_locates_it_with_its_kind() -> None:
    part = _bocpd(_scorer())
    probs = np.zeros(40, np.float32)
    probs[[20, 21, 22, 35]] = 0.9
    located = np.arange(40, dtype=np.int64)
    located[20:23] = 15
    located[35] = 30
    kinds = np.zeros(40, np.int64)
    kinds[35] = 2
    settings = DriftSettings(threshold=0.5, min_events=3, cooldown=2, max_events=200)
    points = part.change_points(EventTrace(probs, np.zeros(40, np.float32), located, kinds),
                                settings)
    assert [(p.index, p.change_index, p.kind) for p in points] == [
        (20, 15, "abrupt"), (35, 30, "recurring")]
    # an operator's higher threshold: fewer alarms, the same rule
    assert part.change_points(EventTrace(probs * 0.5, probs, located, kinds), settings) == []


def test_a_drift_check_costs_microseconds_per_event_whatever_the_catalogue() -> None:
    """Median cost of one served step (one new event) with the ml-100k shapes (19 topics,
    8 components, gap, max_run 200), on the CPU; the item row is read from the part, never
    against the catalogue. Printed for the record, bounded loosely (a shared machine)."""
    rng = np.random.default_rng(1)
    k, d, rows_n = 19, 8, 2_000
    offsets = np.arange(rows_n + 1, dtype=np.int64)
    channels = dataclasses.replace(
        item_channels(np.zeros((2, 4)), topic_space(np.eye(2, 4), None, clusters=1),
                      (np.zeros(4), np.zeros((0, 4)), np.ones(0)), 0),
        topic_offsets=offsets, topic_ids=rng.integers(0, k, rows_n),
        centroids=np.eye(k, 4, dtype=np.float32),
        vectors=rng.normal(size=(rows_n, d)).astype(np.float32),
        pca_mean=np.zeros(4, np.float32), pca_components=np.zeros((d, 4), np.float32),
        pca_scale=np.ones(d, np.float32))
    config = BocpdConfig(hazard_lambda=100.0, max_run=200, n_topics=k, use_vector=True,
                         vector_dim=d, use_gap=True)
    part = BocpdDrift(config, BucketThresholds((50, 150), (0.0, 0.0, 0.0)), channels,
                      [f"t{i}" for i in range(k)])
    engine = part.incremental_engine(None)  # type: ignore[arg-type]
    rows = rng.integers(1, rows_n, 400)
    times = 1e9 + np.cumsum(rng.exponential(600.0, 400))
    state = engine.start([(rows[:200], times[:200])])[0]  # a full posterior (200 bins)
    costs = []
    for t in range(200, 400):
        started = time.perf_counter()
        state = engine.extend([(state, rows[t:t + 1], times[t:t + 1])])[0]
        costs.append(time.perf_counter() - started)
    median_us = 1e6 * float(np.median(costs))
    print(f"bocpd served step: median {median_us:.0f} us per event (R=200, K={k}, d={d}); "
          f"state {state.bocpd.nbytes / 1024:.0f} KiB")
    assert median_us < 20_000


# ----------------------------------------------------------------- every kind, as served
def _served(bundle: InterestModelBundle) -> Recommender:
    return Recommender(ServedModel(bundle=bundle, name="m", version="1", alias="champion",
                                   run_id=None, device="cpu", loaded_at=datetime.now(UTC)))


def _detector(kind: str, scorer: SequenceInterestModel) -> object:
    torch.manual_seed(3)
    if kind == "feature-gru":
        head = DriftHead(N_FEATURES, 8)
    elif kind == "embedding-shift":
        head = EmbeddingShiftHead(N_SHIFT_FEATURES, 8)
    else:
        return _bocpd(scorer)
    with torch.no_grad():  # standardisation as training leaves it, a bias toward alarms
        head.feature_mean.normal_()
        head.feature_std.uniform_(0.3, 2.0)
        head.out.bias.fill_(0.5)
    return head.eval()


@pytest.mark.parametrize("kind", ["feature-gru", "embedding-shift", "bocpd"])
def test_the_served_decision_is_the_replayed_windows_for_every_kind(kind: str) -> None:
    """Users whose events arrive one to three at a time (histories longer than the 30-event
    window, some items unknown to the model); after each arrival the served finding (the
    per-user state carried forward, or the replay for a kind without an engine) equals the
    decision over a replay of the window: same alarm, same change event, same kind."""
    torch.set_num_threads(1)
    scorer = _scorer(seed=1)
    bundle = _bundle(_detector(kind, scorer), scorer)
    served = _served(bundle)
    assert served.interest_states.enabled == (kind != "embedding-shift")
    rng = np.random.default_rng(5)
    detected = 0
    for user in range(6):
        rows, times = _history(rng, int(rng.integers(20, 70)))
        items = [f"m{r - 1}" if rng.random() > 0.1 else f"unknown{r}" for r in rows]
        seen = 0
        while seen < len(items):
            seen = min(len(items), seen + int(rng.integers(1, 4)))
            history = History([f"u{user}e{n}" for n in range(seen)], items[:seen],
                              [float(t) for t in times[:seen]], [None] * seen, seen)
            finding = served.find_drift(history, f"u{user}")
            start = drift_window_start(seen, bundle.drift.max_events)
            known = [k for k in range(start, seen) if bundle.index_of(items[k]) is not None]
            if not known:
                continue
            [trace] = bundle.drift_event_traces([[items[k] for k in known]],
                                                [[float(times[k]) for k in known]])
            expected = bundle.decide(trace)
            np.testing.assert_allclose(finding.probabilities, trace.probabilities, atol=2e-5)
            if expected is None:
                assert finding.change is None
                continue
            detected += 1
            assert finding.change is not None
            assert (finding.change.index, finding.change.kind) == (expected.index,
                                                                   expected.kind)
            assert finding.position == known[expected.change_index]
    assert detected > 0
    if kind != "embedding-shift":
        assert served.interest_states.extensions > 0


def test_topic_centroids_summed_a_block_of_rows_at_a_time_equal_the_whole_tables(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The category topics' centroids do not depend on how many rows are made unit vectors
    at once (a million-item table is never copied whole to float64), bit for bit."""
    import training.drift.bocpd_fit as bocpd_fit

    rng = np.random.default_rng(3)
    text = np.vstack([np.zeros((1, TEXT_DIM)), rng.normal(size=(N_ITEMS, TEXT_DIM))]
                     ).astype(np.float32)
    categories = [CATEGORIES[i] if i % 5 else () for i in range(N_ITEMS)]
    whole = topic_space(text, DriftCatalogue(categories))
    monkeypatch.setattr(bocpd_fit, "TOPIC_BLOCK_ROWS", 7)
    blocked = topic_space(text, DriftCatalogue(categories))
    assert blocked.rows == whole.rows and blocked.names == whole.names
    assert np.array_equal(blocked.centroids, whole.centroids)
    # and both are the mean direction of each topic's unit item vectors
    unit = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
    members = [r for r, topics in enumerate(whole.rows) if whole.names.index("a") in topics]
    expected = unit[members].sum(axis=0)
    np.testing.assert_allclose(whole.centroids[whole.names.index("a")],
                               expected / np.linalg.norm(expected), rtol=1e-5, atol=1e-6)
