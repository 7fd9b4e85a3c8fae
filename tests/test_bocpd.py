"""BOCPD (app/domain/bocpd.py): the recursion against a brute-force posterior, the cap, the
batch/online identity, state size, detection on synthetic streams, kind classification."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy.special import gammaln

from app.domain.bocpd import (
    BocpdConfig,
    BocpdDetector,
    BucketThresholds,
    Observation,
    classify_kind,
    observations_from_arrays,
    trace_alarms,
)

K = 4
D = 2


def _all_channels(max_run: int = 200, hazard: float = 4.0) -> BocpdConfig:
    return BocpdConfig(hazard_lambda=hazard, max_run=max_run, min_age=1, max_age=3,
                       n_topics=K, topic_strength=1.5, topic_base=(0.4, 0.3, 0.2, 0.1),
                       use_vector=True, vector_dim=D, vector_prior=(0.1, 0.7, 1.5, 0.8),
                       use_value=True, value_prior=(3.0, 0.5, 2.0, 1.2),
                       use_gap=True, gap_prior=(4.0, 0.2, 1.0, 5.0))


def _random_stream(n: int, seed: int) -> list[Observation]:
    """Observations with several topics, no topic, and missing values mixed in."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        topics = tuple(int(k) for k in rng.choice(K, size=int(rng.integers(0, 3)),
                                                  replace=False))
        vector = rng.normal(size=D) if rng.random() > 0.2 else None
        value = float(rng.integers(1, 6)) if rng.random() > 0.3 else None
        gap = None if i == 0 else float(rng.exponential(300.0))
        out.append(Observation(topics, vector, value, gap))
    return out


def _ng_log_marginal(xs: list[float], prior: tuple[float, float, float, float]) -> float:
    """Closed-form Normal-Gamma marginal likelihood of a sample."""
    mu0, kappa0, alpha0, beta0 = prior
    if not xs:
        return 0.0
    x = np.asarray(xs)
    n, mean = len(x), float(x.mean())
    kappa_n, alpha_n = kappa0 + n, alpha0 + n / 2
    beta_n = beta0 + 0.5 * float(((x - mean) ** 2).sum()) + kappa0 * n * (mean - mu0) ** 2 / (
        2 * kappa_n)
    return (gammaln(alpha_n) - gammaln(alpha0) + alpha0 * math.log(beta0)
            - alpha_n * math.log(beta_n) + 0.5 * math.log(kappa0 / kappa_n)
            - 0.5 * n * math.log(2 * math.pi))


def _segment_log_lik(segment: list[Observation], config: BocpdConfig) -> float:
    """A segment's likelihood, written independently of the module."""
    alpha = config.topic_strength * np.asarray(config.topic_base) / sum(config.topic_base)
    counts = np.zeros(K)
    total = 0.0
    for obs in segment:
        if obs.topics:
            total += math.log(np.mean([(alpha[k] + counts[k]) / (alpha.sum() + counts.sum())
                                       for k in obs.topics]))
            for k in obs.topics:
                counts[k] += 1.0 / len(obs.topics)
    for dim in range(D):
        total += _ng_log_marginal([float(o.vector[dim]) for o in segment
                                   if o.vector is not None], config.vector_prior)
    total += _ng_log_marginal([o.value for o in segment if o.value is not None],
                              config.value_prior)
    total += _ng_log_marginal([math.log1p(o.gap_s) for o in segment if o.gap_s is not None],
                              config.gap_prior)
    return total


def _brute_force(stream: list[Observation], config: BocpdConfig) -> tuple[np.ndarray, float]:
    """P(r_{n-1} = r) and log evidence by enumerating every segmentation."""
    n = len(stream)
    h = 1.0 / config.hazard_lambda
    joint = np.full(n, -np.inf)
    for flags in itertools.product((0, 1), repeat=n - 1):
        starts = [0] + [i + 1 for i, f in enumerate(flags) if f]
        log_prior = sum(math.log(h) if f else math.log1p(-h) for f in flags)
        bounds = [*starts, n]
        log_lik = sum(_segment_log_lik(stream[a:b], config)
                      for a, b in itertools.pairwise(bounds))
        r = n - 1 - starts[-1]
        joint[r] = np.logaddexp(joint[r], log_prior + log_lik)
    evidence = float(np.logaddexp.reduce(joint))
    return np.exp(joint - evidence), evidence


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recursion_matches_brute_force(seed: int) -> None:
    config = _all_channels()
    detector = BocpdDetector(config)
    stream = _random_stream(8, seed)
    state = detector.initial_state()
    for n, obs in enumerate(stream, start=1):
        state, _ = detector.step(state, obs)
        posterior, evidence = _brute_force(stream[:n], config)
        np.testing.assert_allclose(state.run_length_posterior(), posterior, atol=1e-9, rtol=0)
        assert state.log_evidence == pytest.approx(evidence, abs=1e-9)


def test_cap_changes_nothing_when_it_is_not_reached() -> None:
    stream = _random_stream(12, 5)
    full = BocpdDetector(_all_channels(max_run=500)).run(stream)
    capped = BocpdDetector(_all_channels(max_run=12)).run(stream)
    np.testing.assert_allclose(capped.log_odds, full.log_odds, atol=1e-12)
    np.testing.assert_allclose(capped.state.log_post, full.state.log_post, atol=1e-12)
    # A tighter cap merges mass but keeps a normalised posterior of the cap's size.
    small = BocpdDetector(_all_channels(max_run=5)).run(stream)
    assert len(small.state.log_post) == 5
    assert np.exp(small.state.log_post).sum() == pytest.approx(1.0, abs=1e-12)


def test_run_is_repeated_step() -> None:
    detector = BocpdDetector(_all_channels(max_run=6))
    stream = _random_stream(20, 3)
    trace = detector.run(stream)
    state = detector.initial_state()
    for t, obs in enumerate(stream):
        state, out = detector.step(state, obs)
        assert out.index == t
        assert out.log_odds == trace.log_odds[t]
        assert out.change_index == trace.change_index[t]
    np.testing.assert_array_equal(state.log_post, trace.state.log_post)
    # Resuming from a saved state gives the same trace as one pass.
    head = detector.run(stream[:9])
    tail = detector.run(stream[9:], head.state)
    np.testing.assert_array_equal(np.concatenate([head.log_odds, tail.log_odds]),
                                  trace.log_odds)


def test_state_is_not_mutated_by_step() -> None:
    detector = BocpdDetector(_all_channels())
    state = detector.run(_random_stream(6, 1)).state
    before = [a.copy() for a in (state.log_post, state.topic_counts, state.ng_mu)]
    detector.step(state, Observation((1,), np.ones(D), 4.0, 10.0))
    for old, now in zip(before, (state.log_post, state.topic_counts, state.ng_mu), strict=True):
        np.testing.assert_array_equal(old, now)


def test_state_size_does_not_depend_on_the_catalogue() -> None:
    """The detector sees topics and a vector per event, never item ids: two catalogues whose
    items map onto the same topics give states of the same size."""
    sizes = []
    for n_items in (100, 1_000_000):
        rng = np.random.default_rng(0)
        items = rng.integers(0, n_items, size=300)
        stream = [Observation((int(i % K),), np.full(D, float(i % 7)), None, 60.0)
                  for i in items]
        sizes.append(BocpdDetector(_all_channels(max_run=100)).run(stream).state.nbytes)
    assert sizes[0] == sizes[1]
    assert sizes[0] < 100 * (1 + K + 3 * 4) * 8 + 200


def test_config_round_trips_through_json() -> None:
    config = _all_channels()
    again = BocpdConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config


def _stream(segments: list[tuple[np.ndarray, int]], seed: int) -> list[Observation]:
    """Topic draws from each (topic mix, length) segment, one event a minute."""
    rng = np.random.default_rng(seed)
    topics = [int(rng.choice(len(mix), p=mix)) for mix, n in segments for _ in range(n)]
    return observations_from_arrays([[k] for k in topics],
                                    times=[60.0 * i for i in range(len(topics))])


MIX_A = np.array([0.7, 0.3, 0.0, 0.0, 0.0, 0.0])
MIX_B = np.array([0.0, 0.0, 0.0, 0.0, 0.3, 0.7])


def _topic_detector() -> BocpdDetector:
    return BocpdDetector(BocpdConfig(hazard_lambda=100.0, n_topics=6, topic_strength=2.0))


SANE = 3.0  # log-odds threshold: P(run aged 5..20) >= 0.95


def test_clear_change_is_found_near_its_position() -> None:
    for seed in range(3):
        trace = _topic_detector().run(_stream([(MIX_A, 60), (MIX_B, 40)], seed))
        alarms = trace_alarms(trace.log_odds, trace.change_index, SANE)
        assert len(alarms) == 1
        assert abs(alarms[0].change_index - 60) <= 2
        assert 60 < alarms[0].index <= 60 + 20


def test_stationary_stream_raises_no_alarm() -> None:
    mix = np.array([0.3, 0.2, 0.2, 0.1, 0.1, 0.1])
    for seed in range(5):
        trace = _topic_detector().run(_stream([(mix, 200)], seed))
        assert trace_alarms(trace.log_odds, trace.change_index, SANE) == []
        # The start of a history is no change: no mass for "the run began at event 0".
        assert trace.log_odds[:25].max() < SANE


def test_bucket_thresholds() -> None:
    buckets = BucketThresholds(edges=(50, 150), values=(3.0, 1.0, 2.0))
    per_event = buckets.per_event(200)
    assert per_event[49] == 3.0 and per_event[50] == 1.0 and per_event[150] == 2.0
    log_odds = np.full(200, 2.5)
    alarms = trace_alarms(log_odds, np.arange(200), buckets, cooldown=10)
    assert [a.index for a in alarms] == [50, 61, 72, 83, 94, 105, 116, 127, 138, 149, 160,
                                         171, 182, 193]


def _kind_at_alarm(segments: list[tuple[np.ndarray, int]], seed: int,
                   gradual_ramp: int = 0) -> list[str]:
    """Kinds of the alarms on a synthetic stream, each read from the state at its alarm."""
    rng = np.random.default_rng(seed)
    topics: list[int] = []
    for s, (mix, n) in enumerate(segments):
        previous = segments[s - 1][0] if s else mix
        for j in range(n):
            share = min(1.0, (j + 1) / (gradual_ramp + 1)) if gradual_ramp and s else 1.0
            source = mix if rng.random() < share else previous
            topics.append(int(rng.choice(len(source), p=source)))
    detector = _topic_detector()
    state = detector.initial_state()
    states = []
    for obs in observations_from_arrays([[k] for k in topics]):
        state, _ = detector.step(state, obs)
        states.append(state)
    trace = detector.run(observations_from_arrays([[k] for k in topics]))
    kinds, previous_change = [], None
    for alarm in trace_alarms(trace.log_odds, trace.change_index, SANE):
        kinds.append(classify_kind(states[alarm.index], alarm.change_index,
                                   previous_change).kind)
        previous_change = alarm.change_index
    return kinds


def test_kind_abrupt() -> None:
    hits = [_kind_at_alarm([(MIX_A, 50), (MIX_B, 40)], s) for s in range(6)]
    assert sum(k == ["abrupt"] for k in hits) >= 5


def test_kind_gradual() -> None:
    mid = np.array([0.0, 0.0, 0.5, 0.5, 0.0, 0.0])
    hits = [_kind_at_alarm([(MIX_A, 50), (mid, 50)], s, gradual_ramp=12) for s in range(6)]
    assert sum(bool(k) and k[0] == "gradual" for k in hits) >= 4


def test_kind_recurring() -> None:
    hits = [_kind_at_alarm([(MIX_A, 50), (MIX_B, 30), (MIX_A, 30)], s) for s in range(6)]
    assert sum(len(k) == 2 and k[1] == "recurring" and k[0] != "recurring" for k in hits) >= 5


def test_several_change_points_per_case() -> None:
    from training.drift.evaluation import evaluate_alarms

    metrics = evaluate_alarms([np.array([11, 29, 50]), np.array([40])], [[10, 30], []],
                              [80, 100], ["recurring", "none"])
    assert metrics["recall"] == 1.0
    assert metrics["precision"] == pytest.approx(2 / 4)
    assert metrics["alarms_per_1k"] == pytest.approx(10.0)
    # A single int still means one change point (-1: none), as before.
    single = evaluate_alarms([np.array([11])], [10], [50])
    assert single["f1"] == 1.0


def test_generator_c_recurring_cases_and_pauses_everywhere() -> None:
    from training.data.sequences import UserSequence
    from training.drift.splicing import SpliceConfig, make_cases

    rng = np.random.default_rng(0)
    users = []
    for u in range(12):
        low = 1 if u % 2 == 0 else 21
        n = int(rng.integers(90, 140))
        items = rng.permutation(np.arange(low, low + 20).repeat(8))[:n].astype(np.int64)
        users.append(UserSequence(f"u{u}", items, 1e9 + np.cumsum(rng.integers(5, 60, n))
                                  .astype(np.float64)))
    vectors = np.zeros((41, 2))
    vectors[1:21, 0] = vectors[21:, 1] = 1.0
    config = SpliceConfig.generator_c()
    cases = make_cases(users, vectors, config, {"abrupt": 1, "gradual": 1, "recurring": 1,
                                                "none": 1}, seed=3)
    recurring = [c for c in cases if c.kind == "recurring"]
    assert recurring
    for case in recurring:
        first, back = case.change_points
        assert case.from_b[first] == 1 and case.from_b[back] == 0 and case.from_b[back - 1] == 1
        assert case.labels(3)[back] == 1.0
    pauses = [np.diff(c.times).max() >= config.min_gap_s for c in cases if c.kind == "none"]
    assert any(pauses)  # controls get pauses too, so a pause alone marks no change
