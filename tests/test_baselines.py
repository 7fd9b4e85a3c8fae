"""The simple baselines (training/baselines.py) and how the split treats baskets.

- Each baseline scores as defined (buy-again's decay in baskets, co-occurrence both ways inside
  a basket, popularity breaking every tie), through the model's own evaluation code, in chunks
  that change nothing.
- Baskets: the targets are the last-ingested items of the last baskets; by default the
  basket's other items are history (a leak a co-occurrence baseline exploits), with
  ``basket_holdout`` they are not, and users without an earlier basket are left out.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from training import baselines
from training.data.sequences import UserSequence, leave_one_out, shuffle_ties
from training.data.store import SnapshotItem, snapshot_from_records
from training.evaluate import all_metrics
from training.recommender import prepare_split


def seq(user: str, items: list[int], times: list[float]) -> UserSequence:
    return UserSequence(user, np.asarray(items, np.int64), np.asarray(times, np.float64))


def order(scores: torch.Tensor) -> list[int]:
    """Item indices of one row, best first (column 0, padding, left out)."""
    return [int(i) for i in torch.argsort(scores[1:], descending=True, stable=True) + 1]


def test_basket_age_counts_distinct_timestamps_not_events() -> None:
    flat = baselines.flatten([seq("a", [1, 2, 3, 4, 5], [10, 10, 20, 30, 30]),
                              seq("b", [6], [5])])
    assert flat.basket_age.tolist() == [2, 2, 1, 0, 0, 0]
    assert flat.rows.tolist() == [0, 0, 0, 0, 0, 1]


def test_popularity_breaks_every_tie_lower_index_first() -> None:
    counts = np.array([0.0, 3.0, 5.0, 3.0, 0.0, 0.0])
    rank = baselines.popularity_rank(counts)
    assert len(set(rank.tolist())) == len(rank)
    scores = baselines.ranked_scores(sp.csr_matrix((1, 6)), rank)[0]
    assert scores[0] == -math.inf
    assert order(scores) == [2, 1, 3, 4, 5]


def test_buy_again_decays_by_basket_and_falls_back_to_popularity() -> None:
    # Item 1 bought twice long ago, item 2 once in the latest basket, item 3 in the same
    # basket as item 2 (inside a basket the order must not matter).
    history = [seq("u", [1, 1, 4, 2, 3], [1, 2, 3, 9, 9])]
    prior = baselines.popularity_rank(np.array([0.0, 1, 1, 1, 1, 9, 7]))  # 5 then 6 popular
    flat = baselines.flatten(history)
    frequent = order(baselines.ranked_scores(baselines.repeat_matrix(flat, 6, math.inf),
                                             prior)[0])
    assert frequent[0] == 1 and frequent[4:] == [5, 6]  # then by popularity
    recent = order(baselines.ranked_scores(baselines.repeat_matrix(flat, 6, 0.5), prior)[0])
    assert set(recent[:2]) == {2, 3} and recent[2:4] == [4, 1]  # recency beats frequency
    weights = baselines.repeat_matrix(flat, 6, 0.5).toarray()[0]
    assert weights[2] == weights[3] == pytest.approx(1.0)  # same basket, same age
    assert weights[1] == pytest.approx(math.exp(-3 / 0.5) + math.exp(-2 / 0.5))


def test_cooccurrence_counts_following_items_and_both_ways_inside_a_basket() -> None:
    train = [seq("a", [1, 2, 3], [1, 2, 2]), seq("b", [1, 2], [5, 6])]
    similarity = baselines.cooc_matrix(train, 4, window=1).toarray()
    counts = np.array([0, 2, 2, 1, 0])
    assert similarity[1, 2] == pytest.approx(2 / math.sqrt(counts[1] * counts[2]))
    assert similarity[2, 1] == 0.0  # 1 came before 2, in different timestamps
    assert similarity[2, 3] == similarity[3, 2] == pytest.approx(1 / math.sqrt(2))  # a basket
    assert similarity[1, 3] == 0.0  # two events apart: outside a window of 1
    assert baselines.cooc_matrix(train, 4, window=2).toarray()[1, 3] > 0
    recent = baselines.recent_matrix(baselines.flatten([seq("u", [3, 1, 2], [1, 2, 3])]), 4, 2)
    assert recent.toarray()[0].tolist() == [0, 1, 1, 0, 0]


def test_dense_and_sparse_ranking_paths_agree() -> None:
    rng = np.random.default_rng(0)
    prior = baselines.popularity_rank(rng.integers(0, 4, 30).astype(float))
    values = rng.integers(0, 3, (5, 30)).astype(float)  # many ties
    values[:, 0] = 0
    sparse = sp.csr_matrix(values)
    dense = torch.from_numpy(baselines._dense_ranks(sparse, prior))
    small = baselines.ranked_scores(sp.csr_matrix(np.where(values > 1, values, 0)), prior)
    for row in range(5):
        expected = sorted(range(1, 30), key=lambda i: (values[row, i], prior[i]), reverse=True)
        assert order(torch.cat([torch.tensor([-math.inf]), dense[row, 1:]])) == expected
        positives = [i for i in expected if values[row, i] > 1]
        rest = sorted(set(range(1, 30)) - set(positives), key=lambda i: prior[i], reverse=True)
        assert order(small[row]) == positives + rest


def _repeat_store(users: int = 30, seed: int = 0) -> list[UserSequence]:
    """Each user buys from five favourites of their own (out of 100 items), in baskets of 3."""
    rng = np.random.default_rng(seed)
    out = []
    for u in range(users):
        favourites = rng.choice(np.arange(1, 101), 5, replace=False)
        items = np.where(rng.random(24) < 0.9, rng.choice(favourites, 24),
                         rng.integers(1, 101, 24))
        out.append(UserSequence(f"u{u}", items.astype(np.int64),
                                np.repeat(np.arange(8) * 86_400.0, 3)))
    return out


def test_evaluate_baselines_same_figures_as_the_evaluation_code_and_repeat_wins() -> None:
    split = leave_one_out(_repeat_store(), basket_holdout=True)
    results = baselines.evaluate_baselines(split, 100)
    assert set(results) == {"pop", "repeat", "cooc"}
    best = baselines.best_baseline(results)
    assert best is not None and best.name == "repeat"
    assert best.val_ndcg() > 2 * results["pop"].val_ndcg()
    assert set(best.grid) == {baselines.format_value(t) for t in baselines.TAUS}
    assert best.grid[baselines.format_value(best.value or 0)] == best.val_ndcg()
    # The chunked figures are all_metrics over the whole score matrix.
    prior = baselines.popularity_rank(baselines.item_counts(split.train, 100))
    inputs = split.test_inputs()
    primary = baselines.repeat_matrix(baselines.flatten(inputs), 100, best.value or 0)
    whole = all_metrics(baselines.ranked_scores(primary, prior), inputs, split.test_items)
    chunked = baselines.chunked_metrics(primary, prior, inputs, split.test_items, chunk=7)
    assert chunked == pytest.approx(whole)
    assert results["repeat"].metrics["test"] == pytest.approx(whole)
    flat = baselines.flat_metrics(results)
    assert flat["baseline_repeat_ndcg@10_valid"] == best.val_ndcg()
    assert {"baseline_cooc_hr@10_test", "baseline_pop_ndcg@10_test"} <= set(flat)
    assert baselines.knob_tags(results)["baseline_repeat_tau"] == baselines.format_value(
        best.value or 0)
    assert "repeat (tau=" in baselines.format_table(results)


# --------------------------------------------------------------------------------- baskets
def _basket_snapshot() -> object:
    items = [SnapshotItem(str(i), f"item {i}", f"item {i}") for i in range(1, 9)]
    events = [("u1", "1", 100.0, None, "buy"), ("u1", "2", 100.0, None, "buy"),
              # the last basket, ingested 5, 3, 4: the target is the last ingested (4)
              ("u1", "5", 200.0, None, "buy"), ("u1", "3", 200.0, None, "buy"),
              ("u1", "4", 200.0, None, "buy"),
              ("u2", "6", 300.0, None, "buy"), ("u2", "7", 300.0, None, "buy"),
              ("u2", "8", 300.0, None, "buy")]  # one basket only
    return snapshot_from_records(items, events)


def test_the_split_takes_the_last_ingested_items_of_the_last_basket() -> None:
    snapshot = _basket_snapshot()
    _, split = prepare_split(snapshot, None)  # type: ignore[arg-type]
    assert [s.user_id for s in split.train] == ["u1", "u2"]
    assert split.test_items.tolist() == [4, 8] and split.valid_items.tolist() == [3, 7]
    # By default the basket's other items are history, at the very time of the request.
    assert split.valid_inputs()[0].items.tolist() == [1, 2, 5]
    assert split.test_inputs()[0].items.tolist() == [1, 2, 5, 3]
    assert split.test_inputs()[0].times[-1] == split.test_times[0]


def test_basket_holdout_keeps_the_targets_basket_out_of_the_history() -> None:
    snapshot = _basket_snapshot()
    _, split = prepare_split(snapshot, None, basket_holdout=True)  # type: ignore[arg-type]
    assert [s.user_id for s in split.train] == ["u1"]  # u2 has no earlier basket
    assert split.test_items.tolist() == [4] and split.valid_items.tolist() == [3]
    assert split.valid_inputs()[0].items.tolist() == [1, 2]
    assert split.test_inputs()[0].items.tolist() == [1, 2]
    assert (split.test_inputs()[0].times < split.test_times[0]).all()
    assert split.train[0].items.tolist() == [1, 2, 5]  # training data itself is unchanged
    # Targets in different baskets: the validation item is history for the test one.
    other = leave_one_out([seq("u", [1, 2, 3, 4], [1, 2, 3, 4])], basket_holdout=True)
    assert other.test_inputs()[0].items.tolist() == [1, 2, 3]


def test_basket_holdout_removes_the_basket_completion_leak() -> None:
    """Items come in fixed pairs bought together; without the holdout the co-occurrence
    baseline is shown the target's partner in the history and completes the basket."""
    rng = np.random.default_rng(1)
    sequences = []
    for u in range(60):
        pairs = rng.integers(0, 40, 6)
        items = np.stack([2 * pairs + 1, 2 * pairs + 2], axis=1).ravel()
        sequences.append(UserSequence(f"u{u}", items.astype(np.int64),
                                      np.repeat(np.arange(6) * 3600.0, 2)))
    leaky = baselines.evaluate_baselines(leave_one_out(sequences), 80)["cooc"]
    held = baselines.evaluate_baselines(leave_one_out(sequences, basket_holdout=True),
                                        80)["cooc"]
    assert leaky.metrics["test"]["hr@10"] > 0.9
    assert held.metrics["test"]["hr@10"] < 0.5


def test_shuffle_ties_never_reorders_distinct_sub_second_times() -> None:
    times = np.array([10.2, 10.6, 10.6, 10.9, 11.0])
    sequence = UserSequence("u", np.arange(1, 6), times)
    orders = set()
    for seed in range(30):
        (shuffled,) = shuffle_ties([sequence], np.random.default_rng(seed))
        assert np.array_equal(shuffled.times, times)
        assert shuffled.items[0] == 1 and shuffled.items[3:].tolist() == [4, 5]
        orders.add(tuple(shuffled.items.tolist()))
    assert orders == {(1, 2, 3, 4, 5), (1, 3, 2, 4, 5)}
