"""Drift detection: splicing, metrics, calibration, causality of the head, decisions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.domain.drift import (
    alarm_indices,
    detect_change_point,
    detect_change_points,
    interests_around,
    kind_score,
    top_topics,
)
from app.ml.drift_head import N_FEATURES, DriftHead, drift_features, windowed_hidden
from app.ml.sequence import SequenceInterestModel, SequenceModelConfig
from training.data.sequences import UserSequence
from training.drift.calibration import (
    calibrate_threshold,
    fit_kind_threshold,
    score_alarm_rate,
    tune_knob,
)
from training.drift.evaluation import evaluate_alarms, match_case
from training.drift.pipeline import DriftConfig, train_and_evaluate_drift
from training.drift.splicing import (
    SpliceConfig,
    load_cases,
    make_cases,
    save_cases,
    split_users,
)

N_ITEMS = 40


def _users(n: int, seed: int = 0) -> list[UserSequence]:
    """Users who each like one half of a 40-item catalogue (items 1..20 or 21..40)."""
    rng = np.random.default_rng(seed)
    users = []
    for u in range(n):
        low = 1 if u % 2 == 0 else 21
        length = int(rng.integers(30, 60))
        items = rng.choice(np.arange(low, low + 20), size=length, replace=True).astype(np.int64)
        times = np.cumsum(rng.integers(1, 500, size=length)).astype(np.float64) + 1e9
        users.append(UserSequence(f"u{u}", items, times))
    return users


def _item_vectors() -> np.ndarray:
    """float[N+1, 2]: one axis per half of the catalogue, row 0 zeros."""
    vectors = np.zeros((N_ITEMS + 1, 2))
    vectors[1:21, 0] = 1.0
    vectors[21:, 1] = 1.0
    return vectors


def _model(max_len: int = 8) -> SequenceInterestModel:
    torch.manual_seed(0)
    config = SequenceModelConfig(hidden_size=16, num_layers=1, num_heads=2, ff_size=32,
                                 max_len=max_len)
    model = SequenceInterestModel(config, N_ITEMS, text_dim=2)
    model.set_item_text_embeddings(torch.as_tensor(_item_vectors(), dtype=torch.float32))
    return model.eval()


SPLICE = SpliceConfig(min_prefix=12, max_prefix=20, min_suffix=8, max_suffix=15, ramp=4)


def test_splice_labels_sit_at_the_splice_and_partner_is_far() -> None:
    users = _users(20)
    cases = make_cases(users, _item_vectors(), SPLICE, {"abrupt": 2, "gradual": 2}, seed=3)
    assert {c.kind for c in cases} == {"abrupt", "gradual"}
    by_id = {u.user_id: u for u in users}
    for case in cases:
        cp = case.change_point
        a = by_id[case.user_a]
        assert case.items[:cp] == a.items[:cp].tolist()  # A's start, untouched
        assert case.from_b[cp] == 1 and not any(case.from_b[:cp])  # first B event at cp
        if case.kind == "abrupt":
            assert all(case.from_b[cp:])
        # B likes the other half of the catalogue (the far partner).
        assert (case.items[cp] <= 20) != (a.items[0] <= 20)
        labels = case.labels(window=3)
        assert labels[cp : cp + 3].tolist() == [1.0, 1.0, 1.0] and labels.sum() == 3
        assert np.all(np.diff(case.times) >= 0)


def test_splicing_is_reproducible_under_a_seed(tmp_path) -> None:
    users = _users(20)
    per_user = {"abrupt": 1, "gradual": 1, "none": 1}
    first = make_cases(users, _item_vectors(), SPLICE, per_user, seed=7)
    again = make_cases(users, _item_vectors(), SPLICE, per_user, seed=7)
    other = make_cases(users, _item_vectors(), SPLICE, per_user, seed=8)
    assert first == again and first != other
    save_cases({"evaluation": first}, tmp_path / "cases.json")
    assert load_cases(tmp_path / "cases.json") == {"evaluation": first}
    unspliced = [c for c in first if c.kind == "none"]
    assert len(unspliced) == 20 and all(c.labels(3).sum() == 0 for c in unspliced)


def test_user_groups_are_disjoint_and_seeded() -> None:
    ids = [f"u{i}" for i in range(100)]
    train, calib, evaluation = split_users(ids, (0.4, 0.3, 0.3), seed=1)
    assert (len(train), len(calib), len(evaluation)) == (40, 30, 30)
    assert set(train) | set(calib) | set(evaluation) == set(ids)
    assert not (set(train) & set(calib)) and not (set(calib) & set(evaluation))
    assert split_users(ids, (0.4, 0.3, 0.3), seed=1)[0] == train
    assert split_users(ids, (0.4, 0.3, 0.3), seed=2)[0] != train


def test_match_case_counts_margin_hits_and_delay() -> None:
    outcome = match_case(np.array([5, 22, 40]), change_point=20, margin=3)
    assert outcome.true_positive and outcome.false_positives == 2 and outcome.delay == 2
    late = match_case(np.array([30]), change_point=20, margin=3)
    assert not late.true_positive and late.false_positives == 1 and late.delay == 10
    assert match_case(np.array([1, 2]), change_point=-1).false_positives == 2


def test_evaluate_alarms_on_hand_made_cases() -> None:
    alarms = [np.array([21]), np.array([17, 50]), np.array([]), np.array([10])]
    metrics = evaluate_alarms(alarms, change_points=[20, 20, 20, -1],
                              lengths=[60, 60, 60, 500], kinds=["abrupt", "gradual",
                                                                "abrupt", "none"])
    # TP: case 0 (21) and case 1 (17); FP: 50 and the unspliced alarm; FN: case 2.
    assert metrics["precision"] == pytest.approx(2 / 4)
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert metrics["median_delay"] == pytest.approx(-1.0)  # delays 1 and -3
    assert metrics["alarms_per_1k"] == pytest.approx(2.0)
    assert metrics["recall_abrupt"] == pytest.approx(0.5)
    assert metrics["recall_gradual"] == pytest.approx(1.0)


def test_calibration_hits_target_rate_on_synthetic_scores() -> None:
    rng = np.random.default_rng(0)
    calibration = [rng.random(100) for _ in range(400)]
    held_out = [rng.random(100) for _ in range(400)]
    threshold = calibrate_threshold(calibration, 2.0, min_events=10, cooldown=10)
    assert score_alarm_rate(calibration, threshold, 10, 10) <= 2.0
    # At the next lower score there are more alarms than the target: it is the tightest.
    pooled = np.concatenate([s[9:] for s in calibration])
    next_lower = pooled[pooled < threshold].max()
    assert score_alarm_rate(calibration, next_lower, 10, 10) > 2.0
    assert 1.0 <= score_alarm_rate(held_out, threshold, 10, 10) <= 3.5
    # iid uniform scores: the per-event rate 1 - threshold is about 2 per 1,000.
    assert threshold == pytest.approx(0.998, abs=0.0015)


def test_tune_knob_finds_the_rate_matching_setting() -> None:
    def rate(knob: float) -> float:
        return 100.0 / knob  # falls with the knob; 2 per 1,000 at knob = 50

    knob = tune_knob(rate, 2.0, 1e-2, 1e4, rate_rises_with_knob=False, steps=30)
    assert knob == pytest.approx(50.0, rel=1e-3) and rate(knob) <= 2.0


def test_windowed_hidden_matches_the_model_where_it_fits() -> None:
    model = _model(max_len=8)
    users = _users(2)
    items = torch.as_tensor(np.stack([u.items[:20] for u in users]))
    times = torch.as_tensor(np.stack([u.times[:20] for u in users]))
    with torch.no_grad():
        full = windowed_hidden(model, items, times)
        assert torch.allclose(full[:, :8], model(items[:, :8], times[:, :8]), atol=1e-5)
        # Event 13 is read from the window starting at 8 (it has 4..7 events of history).
        assert torch.allclose(full[:, 13], model(items[:, 8:16], times[:, 8:16])[:, 5],
                              atol=1e-5)


def test_features_and_head_are_causal() -> None:
    model = _model(max_len=8)
    user = _users(1)[0]
    items = torch.as_tensor(user.items[:25]).unsqueeze(0)
    times = torch.as_tensor(user.times[:25]).unsqueeze(0)
    changed = items.clone()
    changed[0, 15:] = torch.flip(changed[0, 15:], dims=[0]) % N_ITEMS + 1
    text = torch.as_tensor(_item_vectors(), dtype=torch.float32)
    before = drift_features(model, items, times, text)
    after = drift_features(model, changed, times, text)
    assert before.shape == (1, 25, N_FEATURES)
    assert torch.allclose(before[:, :15], after[:, :15], atol=1e-5)
    assert not torch.allclose(before[:, 15:], after[:, 15:])
    head = DriftHead(N_FEATURES, hidden_size=8)
    p_before, p_after = head.probabilities(before), head.probabilities(after)
    assert torch.allclose(p_before[:, :15], p_after[:, :15], atol=1e-6)
    assert not torch.allclose(p_before[:, 15:], p_after[:, 15:])


def test_detect_change_point_on_a_synthetic_trace() -> None:
    probs = np.full(60, 0.05)
    probs[5] = 0.9  # before the minimum-events guard: ignored
    probs[20:23] = [0.95, 0.9, 0.8]  # abrupt: jumps from 0.05 to above the threshold
    probs[38:45] = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]  # gradual climb
    points = detect_change_points(probs, threshold=0.6, min_events=10, cooldown=10)
    assert [(p.index, p.kind) for p in points] == [(20, "abrupt"), (42, "gradual")]
    latest = detect_change_point(probs, threshold=0.6, min_events=10, cooldown=10)
    assert latest is not None and latest.index == 42 and latest.score == pytest.approx(0.6)
    assert detect_change_point(np.full(60, 0.1), threshold=0.6) is None
    # Cooldown: a burst gives one alarm; after the cooldown a new one may come.
    assert alarm_indices(np.ones(30), 0.5, min_events=10, cooldown=10).tolist() == [9, 20]


def test_kind_from_surprise_after_the_change() -> None:
    probs = np.full(40, 0.05)
    probs[20] = 0.9
    settled = np.concatenate([np.full(20, 5.0), [9.0], np.full(19, 5.5)])
    confused = np.concatenate([np.full(20, 5.0), [9.0], np.tile([8.0, 5.0], 9), [8.0]])
    assert kind_score(settled, 20) == pytest.approx(0.5)
    assert kind_score(confused, 20) == pytest.approx((3 * 8.0 + 2 * 5.0) / 5 - 5.0)
    assert kind_score(settled, 39) is None  # nothing after the last event yet
    cut = fit_kind_threshold([0.1, 0.5, 0.7, 1.5, 2.0], [False, False, False, True, True])
    assert cut == pytest.approx(1.1)
    for trace, kind in ((settled, "abrupt"), (confused, "gradual")):
        point = detect_change_point(probs, 0.6, surprise=trace, kind_threshold=cut)
        assert point is not None and point.index == 20 and point.kind == kind


def test_interests_around_a_change_point() -> None:
    topics = [[0], [0], [0, 1], [2], [2], [2]]
    before, after = interests_around(topics, change_index=3, n_topics=3)
    assert before.tolist() == pytest.approx([2.5 / 3, 0.5 / 3, 0.0])
    assert after.tolist() == [0.0, 0.0, 1.0]
    assert top_topics(before, ["drama", "comedy", "horror"], k=3) == [
        ("drama", pytest.approx(2.5 / 3)), ("comedy", pytest.approx(0.5 / 3))]
    windowed, _ = interests_around(topics, change_index=3, n_topics=3, window=1)
    assert windowed.tolist() == [0.5, 0.5, 0.0]


def test_pipeline_runs_end_to_end_on_tiny_data() -> None:
    config = DriftConfig.tiny()
    config.splice = SPLICE
    config.max_users = None
    result = train_and_evaluate_drift(_model(max_len=16), torch.as_tensor(_item_vectors()),
                                      _users(48), config, seed=0, device=torch.device("cpu"),
                                      progress=False)
    expected = {"ours", "adwin", "page_hinkley", "kernel_cpd", "adwin_default",
                "page_hinkley_default", "kernel_cpd_default", "kernel_cpd_items", "never",
                "every_7"}
    assert expected <= set(result.metrics)
    assert result.calibration_alarms_per_1k <= config.target_alarms_per_1k
    for group in ("train", "calibration"):
        assert not set(result.groups[group]) & set(result.groups["evaluation"])
    assert result.metrics["never"]["recall"] == 0.0
    assert result.metrics["every_7"]["recall"] == 1.0


def test_generator_b_pauses_at_the_join_keeps_some_of_a_and_stays_reproducible() -> None:
    users = _users(30)
    config = SpliceConfig(min_prefix=12, max_prefix=20, min_suffix=8, max_suffix=15, ramp=4,
                          far_quantile=0.67, partner_rule="per_user", join="gap",
                          keep_a=0.3, min_gap_s=86400.0, max_gap_s=2 * 86400.0)
    cases = make_cases(users, _item_vectors(), config, {"abrupt": 3}, seed=5)
    assert cases and cases == make_cases(users, _item_vectors(), config, {"abrupt": 3}, seed=5)
    kept_a = 0
    for case in cases:
        c = case.change_point
        assert case.from_b[c] == 1 and 86400.0 <= case.times[c] - case.times[c - 1] <= 172800.0
        kept_a += sum(1 for b in case.from_b[c:] if b == 0)
        assert len(case.items) <= config.max_unspliced
    assert kept_a > 0  # a partial change: some of A's events come after the change


def test_shift_features_are_causal_and_the_shift_head_is_a_drift_kind(tmp_path) -> None:
    from app.ml.drift_shift import N_SHIFT_FEATURES, EmbeddingShiftHead, shift_features
    from app.ml.parts import get_kind, load_part, save_part

    model = _model(max_len=16)
    items = torch.as_tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 25, 26, 27, 28, 29, 30]])
    full = shift_features(items, model.item_text)
    assert full.shape == (1, 16, N_SHIFT_FEATURES)
    cut = shift_features(items[:, :11], model.item_text)
    assert torch.allclose(full[:, :11], cut, atol=1e-5)
    shift_1_30, shift_3_30 = full[0, :, 0], full[0, :, 1]
    assert shift_1_30[10] > 0.9 and shift_1_30[9] < 0.01  # the jump to the other half
    assert shift_3_30[12] > shift_3_30[11] > shift_3_30[10] > shift_3_30[9]
    head = EmbeddingShiftHead(2 * N_SHIFT_FEATURES, gammas=[3.0, 2.0], spaces=["items", "text"])
    assert get_kind("drift", "embedding-shift").cls is EmbeddingShiftHead
    entry = save_part("drift", head, tmp_path)
    loaded = load_part("drift", entry, tmp_path, torch.device("cpu"))
    times = torch.arange(16, dtype=torch.float64).unsqueeze(0) * 60
    assert torch.equal(loaded.traces(model, items, times).probabilities,
                       head.traces(model, items, times).probabilities)
    assert loaded.gammas == [3.0, 2.0] and loaded.spaces == ["items", "text"]


def test_unseen_view_scores_generator_b_through_a_held_out_scorer() -> None:
    config = DriftConfig.tiny()
    config.splice = SPLICE
    config.kind = "embedding-shift"
    config.options = {"spaces": ["items", "text"], "surprise": True}
    config.max_users = None
    fitted: list[list[str]] = []

    def heldout(user_ids: list[str]) -> SequenceInterestModel:
        fitted.append(user_ids)
        torch.manual_seed(1)
        return _model(max_len=16)

    result = train_and_evaluate_drift(_model(max_len=16), torch.as_tensor(_item_vectors()),
                                      _users(48), config, seed=0, device=torch.device("cpu"),
                                      progress=False, heldout=heldout)
    # the held-out model fits on half the head-training users; the unseen head on the rest
    assert fitted == [result.groups["heldout_scorer"]]
    assert set(result.groups["heldout_scorer"]) | set(result.groups["train_oof"]) == \
        set(result.groups["train"])
    assert not set(result.groups["heldout_scorer"]) & set(result.groups["train_oof"])
    assert all(c.user_a in result.groups["train_oof"] for c in result.cases["train_oof"])
    assert set(result.by_protocol) == {"seen_a", "seen_b", "unseen_a", "unseen_b"}
    assert result.metrics_unseen is result.by_protocol["unseen_b"]
    assert {"ours", "adwin", "page_hinkley", "kernel_cpd"} <= set(result.metrics_unseen)
    assert "threshold" in result.knobs_unseen  # the unseen pass calibrates its own threshold
    assert result.unseen_calibration_alarms_per_1k is not None
    assert result.unseen_calibration_alarms_per_1k <= config.target_alarms_per_1k
    assert all(c.user_a in result.groups["evaluation"] for c in result.cases["evaluation_b"])
    assert result.detector.spaces == ["items", "text"] and result.detector.surprise


def test_drift_feature_columns_are_set_by_name_once() -> None:
    """Batch and per-event features both stack through feature_matrix, which takes every
    FEATURE_NAMES column by name and no other: a column added to one builder only fails."""
    from app.ml.drift_head import FEATURE_NAMES, feature_matrix

    columns = {name: torch.full((2,), float(n)) for n, name in enumerate(FEATURE_NAMES)}
    assert feature_matrix(columns)[0].tolist() == list(range(len(FEATURE_NAMES)))
    with pytest.raises(ValueError, match="log_gap"):
        feature_matrix({name: v for name, v in columns.items() if name != "log_gap"})
    with pytest.raises(ValueError, match="extra"):
        feature_matrix({**columns, "extra": torch.zeros(2)})


def test_kernel_cpd_gives_no_alarm_on_a_history_too_short_to_split() -> None:
    from training.drift.baselines import KernelCPDRunner

    rng = np.random.default_rng(0)
    short, long = rng.normal(size=(3, 4)), np.concatenate([np.zeros((20, 4)),
                                                             np.ones((20, 4)) * 5])
    alarms = KernelCPDRunner([short, long]).alarms(1.0, min_events=1)
    assert alarms[0].tolist() == []
    assert 19 <= int(alarms[1][0]) <= 21  # the long one still finds its change
