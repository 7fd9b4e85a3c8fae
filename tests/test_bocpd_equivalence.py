"""The served BOCPD (one step of many small array operations made fewer: Normal-Gamma terms
read from a table by count, a window's observations read up front) gives what the first,
plain implementation gave (tests/bocpd_reference.py), bit for bit: states, outputs, kinds
and the per-event trace."""

from __future__ import annotations

import numpy as np
import pytest

from app.domain.bocpd import (
    BocpdConfig,
    BocpdDetector,
    BocpdState,
    BucketThresholds,
    KindRule,
    Observation,
    classify_kind,
)
from app.ml.drift_bocpd import BocpdDrift, ItemChannels
from tests import bocpd_reference as reference

STATE_FIELDS = ("log_post", "topic_counts", "ng_n", "ng_mu", "ng_beta")


def _config(rng: np.random.Generator) -> BocpdConfig:
    k = int(rng.integers(1, 25))
    topics = bool(rng.random() < 0.9)
    d = int(rng.integers(0, 10))
    return BocpdConfig(
        hazard_lambda=float(rng.choice([20.0, 100.0, 250.0])),
        max_run=int(rng.choice([2, 5, 30, 200])), min_age=int(rng.integers(0, 4)),
        max_age=int(rng.integers(4, 25)), use_topics=topics, n_topics=k if topics else 0,
        topic_base=tuple(rng.random(k) + 0.1) if topics and rng.random() < 0.5 else None,
        use_vector=d > 0, vector_dim=d, use_value=bool(rng.random() < 0.3),
        use_gap=bool(rng.random() < 0.8))


def _observation(rng: np.random.Generator, config: BocpdConfig, first: bool) -> Observation:
    """Topic ids (some repeated, some outside the topics), a vector (sometimes missing, or
    with a missing column), a value and a gap (sometimes missing)."""
    k = config.n_topics
    topics = tuple(int(i) for i in rng.integers(-2, k + 2, int(rng.integers(0, 4))))
    vector = None
    if config.vector_dim and rng.random() > 0.05:
        vector = rng.normal(size=config.vector_dim).astype(np.float32)
        if rng.random() < 0.05:
            vector[0] = np.nan
    value = None if rng.random() < 0.3 else float(rng.normal(3.5, 1.0))
    gap = None if first or rng.random() < 0.05 else float(rng.exponential(3600.0))
    return Observation(topics, vector, value, gap)


def _assert_same_state(expected: BocpdState, got: BocpdState) -> None:
    assert got.t == expected.t and got.log_evidence == expected.log_evidence
    for name in STATE_FIELDS:
        assert np.array_equal(getattr(got, name), getattr(expected, name)), name


@pytest.mark.parametrize("seed", range(4))
def test_a_step_is_the_reference_step_bit_for_bit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(40):
        config = _config(rng)
        detector = BocpdDetector(config)
        expected = got = detector.initial_state()
        for i in range(int(rng.integers(1, 90))):
            obs = _observation(rng, config, i == 0)
            expected, want = reference.step(detector, expected, obs)
            got, out = detector.step(got, obs)
            assert out == want
            _assert_same_state(expected, got)


def test_the_kind_is_the_reference_kind_for_any_change_and_previous_change() -> None:
    rng = np.random.default_rng(11)
    found = set()
    for _ in range(60):
        k = int(rng.integers(1, 25))
        detector = BocpdDetector(BocpdConfig(n_topics=k, max_run=int(rng.choice([5, 30, 200])),
                                             use_gap=True))
        rule = KindRule(context=int(rng.integers(2, 25)), min_earlier=int(rng.integers(1, 8)))
        state = detector.initial_state()
        for i in range(int(rng.integers(5, 80))):
            topics = () if i % 17 == 0 else tuple(int(t) for t in rng.integers(0, k, 2))
            state, out = detector.step(state, Observation(topics, None, None, 10.0))
            for change in (out.change_index, int(rng.integers(-2, state.t + 2)), state.t - 1):
                previous = None if rng.random() < 0.5 else int(rng.integers(0, state.t + 1))
                got = classify_kind(state, change, previous, rule)
                expected = reference.classify_kind(state, change, previous, rule)
                assert (got.kind, got.old_share, got.tv_preceding, got.tv_earlier) == expected
                found.add(got.kind)
    assert found == {"abrupt", "gradual", "recurring"}


def test_observations_read_up_front_are_those_read_one_at_a_time() -> None:
    rng = np.random.default_rng(4)
    for _ in range(20):
        config = _config(rng)
        detector = BocpdDetector(config)
        events = [_observation(rng, config, i == 0) for i in range(12)]
        events = [Observation(e.topics, None if config.vector_dim == 0 else
                              np.nan_to_num(e.vector, nan=0.5) if e.vector is not None else
                              np.zeros(config.vector_dim, np.float32), e.value, e.gap_s)
                  for e in events]
        vectors = (np.stack([e.vector for e in events]) if config.vector_dim else None)
        matrix = detector.normal_matrix(len(events), vectors, [e.value for e in events],
                                        [e.gap_s for e in events])
        expected = np.stack([detector.normal_values(e) for e in events])
        assert np.array_equal(matrix, expected, equal_nan=True)


def _part(rng: np.random.Generator, rows: int = 300, k: int = 19, d: int = 8) -> BocpdDrift:
    counts = rng.integers(0, 3, rows + 1)
    counts[0] = 0
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    channels = ItemChannels(
        topic_offsets=offsets, topic_ids=rng.integers(0, k, int(offsets[-1])),
        centroids=np.eye(k, 16, dtype=np.float32),
        vectors=rng.normal(size=(rows + 1, d)).astype(np.float32),
        pca_mean=np.zeros(16, np.float32), pca_components=np.eye(d, 16, dtype=np.float32),
        pca_scale=np.ones(d, np.float32))
    config = BocpdConfig(hazard_lambda=50.0, max_run=40, min_age=3, max_age=12, n_topics=k,
                         use_vector=True, vector_dim=d, use_gap=True)
    return BocpdDrift(config, BucketThresholds((10, 30), (-2.0, -1.0, 0.0)), channels,
                      [f"t{i}" for i in range(k)], KindRule(context=10, min_earlier=3))


def test_the_parts_trace_carried_forward_in_chunks_is_the_reference_replay() -> None:
    rng = np.random.default_rng(9)
    part = _part(rng)
    alarms = 0
    for _ in range(8):
        n = int(rng.integers(20, 70))
        # one part of the catalogue, then another: changes to find and classify
        cut = int(rng.integers(5, n - 5))
        rows = np.where(np.arange(n) < cut, rng.integers(1, 150, n), rng.integers(150, 301, n))
        times = 1e9 + np.cumsum(rng.choice([5.0, 600.0, 86_400.0], n))
        expected = reference.advance(part, part.initial(), rows.tolist(), times.tolist())
        state, start = part.initial(), 0
        while start < n:  # a few events at a time, as the per-user states get them
            stop = min(n, start + int(rng.integers(1, 9)))
            state = part.advance(state, None, rows[start:stop], times[start:stop])
            start = stop
        assert state.last_time == expected.last_time
        for name in ("probabilities", "surprise", "located", "kinds"):
            assert np.array_equal(getattr(state, name), getattr(expected, name)), name
        _assert_same_state(expected.bocpd, state.bocpd)
        alarms += int((expected.probabilities >= 0.5).sum())
    assert alarms > 0
