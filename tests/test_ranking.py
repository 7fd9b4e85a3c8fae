"""Ranking: top-k exclusions and ties, the drift-aware tilt, explanations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.domain.ranking import (
    drift_aware_scores,
    explain_topics,
    indexed_topics,
    rank,
    top_k,
)

NAMES = ["Drama", "Sci-Fi", "Comedy"]
# Model-indexed: entry 0 is padding; items 1..6 alternate Drama-heavy scores, Sci-Fi lower.
SCORES = np.array([-np.inf, 5.0, 4.5, 4.0, 2.0, 1.5, 1.0])
TOPICS = indexed_topics([0, 0, 0, 1, 1, 2])  # items 1-3 Drama, 4-5 Sci-Fi, 6 Comedy


def test_top_k_never_returns_padding_excluded_or_non_finite() -> None:
    scores = np.array([99.0, 1.0, 3.0, -np.inf, 2.0, np.nan])
    indices, values = top_k(scores, 10, exclude=np.array([2]))
    assert list(indices) == [4, 1]
    assert list(values) == [2.0, 1.0]
    assert list(top_k(scores, 10, pad_index=None)[0]) == [0, 2, 4, 1]


def test_top_k_ties_go_to_the_lower_index() -> None:
    scores = np.array([0.0, 1.0, 2.0, 2.0, 2.0, 1.0])
    assert list(top_k(scores, 2)[0]) == [2, 3]
    assert list(top_k(scores, 4)[0]) == [2, 3, 4, 1]
    assert len(top_k(scores, 0)[0]) == 0


def test_drift_boost_moves_post_change_topic_up() -> None:
    before = rank(SCORES, TOPICS, k=3)
    after = rank(SCORES, TOPICS, k=3, post_change_weights={1: 0.8, 0: 0.2}, strength=2.0)
    assert list(before.indices) == [1, 2, 3] and not before.drift_aware
    # 5 + 2 log(0.201) = 1.79 > 2 + 2 log(0.801) = 1.56 > 4.5 + 2 log(0.201) = 1.29:
    # the Sci-Fi item overtakes the weaker Drama items, the strong old favourite stays first.
    assert list(after.indices) == [1, 4, 2] and after.drift_aware
    assert after.scores[1] == pytest.approx(2.0 + 2.0 * np.log(0.8 + 1e-3))


def test_tilt_keeps_order_within_a_topic_and_padding_at_minus_inf() -> None:
    adjusted = drift_aware_scores(SCORES, TOPICS, np.array([0.1, 0.6, 0.3]), strength=2.0)
    assert adjusted[0] == -np.inf
    assert adjusted[1] > adjusted[2] > adjusted[3]  # Drama items keep their order
    assert adjusted[4] - SCORES[4] == pytest.approx(2.0 * np.log(0.6 + 1e-3))


def test_no_drift_leaves_scores_and_order_unchanged() -> None:
    assert np.array_equal(drift_aware_scores(SCORES, TOPICS, None, 1.0), SCORES)
    assert np.array_equal(drift_aware_scores(SCORES, TOPICS, {1: 1.0}, 0.0), SCORES)
    assert np.array_equal(drift_aware_scores(SCORES, TOPICS, {1: 0.0}, 1.0), SCORES)
    # Post-change interests that already agree with the model do not reorder the top-k.
    same = rank(SCORES, TOPICS, k=3, post_change_weights={0: 1.0}, strength=1.0)
    assert list(same.indices) == [1, 2, 3] and not same.drift_aware


def test_seen_items_are_excluded_from_the_drift_aware_ranking() -> None:
    result = rank(SCORES, TOPICS, k=3, post_change_weights={1: 1.0}, exclude=[4, 1])
    assert 4 not in result.indices and 1 not in result.indices
    assert list(result.indices) == [5, 2, 3]


def test_torch_scores_are_accepted() -> None:
    scores = torch.tensor(SCORES, dtype=torch.bfloat16)
    indices, _ = top_k(scores, 2)
    assert list(indices) == [1, 2]
    adjusted = drift_aware_scores(scores, torch.tensor(TOPICS), {1: 1.0}, 1.0)
    assert list(top_k(adjusted, 1)[0]) == [4]


def test_explain_topics() -> None:
    assert explain_topics(np.array([4, 1, 6, 0]), TOPICS, NAMES) == [
        "Sci-Fi", "Drama", "Comedy", "unknown"]
    assert list(TOPICS) == [-1, 0, 0, 0, 1, 1, 2]
