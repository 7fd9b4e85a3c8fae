"""Sequence model (causality, padding), data split, metrics and the tiny end-to-end run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from app.ml.sequence import SequenceInterestModel, SequenceModelConfig, time_features
from training.data.movielens import Movie, MovieLens, Rating
from training.data.sequences import (
    UserSequence,
    build_user_sequences,
    build_vocab,
    last_window,
    leave_one_out,
    shuffle_ties,
    training_windows,
)
from training.evaluate import mask_history, popularity_scores, ranking_metrics
from training.recommender import RecommenderConfig, train_recommender

N_ITEMS, TEXT_DIM = 30, 8


def make_model(**overrides: object) -> SequenceInterestModel:
    torch.manual_seed(0)
    config = SequenceModelConfig(max_len=12, **overrides)  # type: ignore[arg-type]
    model = SequenceInterestModel(config, N_ITEMS, TEXT_DIM)
    model.set_item_text_embeddings(torch.cat([torch.zeros(1, TEXT_DIM),
                                              torch.randn(N_ITEMS, TEXT_DIM)]))
    return model.eval()


def events(length: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    items = torch.randint(1, N_ITEMS + 1, (1, length), generator=generator)
    gaps = torch.randint(0, 100_000, (1, length), generator=generator).double()
    return items, 880_000_000.0 + gaps.cumsum(dim=1)


@pytest.mark.parametrize("content", [True, False])
def test_later_events_do_not_change_earlier_states(content: bool) -> None:
    model = make_model(use_text=content, use_time=content)
    items, times = events(10)
    changed_items, changed_times = items.clone(), times.clone()
    changed_items[0, 6:] = (changed_items[0, 6:] % N_ITEMS) + 1
    changed_times[0, 6:] += 5_000.0
    with torch.no_grad():
        before, after = model(items, times), model(changed_items, changed_times)
    assert torch.allclose(before[0, :6], after[0, :6], atol=1e-5)
    assert not torch.allclose(before[0, 6:], after[0, 6:], atol=1e-3)


def test_right_padding_does_not_change_real_positions() -> None:
    model = make_model()
    items, times = events(7)
    padded_items = torch.cat([items, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    padded_times = torch.cat([times, torch.zeros(1, 5, dtype=torch.float64)], dim=1)
    with torch.no_grad():
        short, padded = model(items, times), model(padded_items, padded_times)
        last_short = model.last_hidden(items, times)
        last_padded = model.last_hidden(padded_items, padded_times)
    assert torch.allclose(short[0], padded[0, :7], atol=1e-5)
    assert torch.allclose(last_short, last_padded, atol=1e-5)
    assert torch.allclose(last_short[0], short[0, 6], atol=1e-5)


def test_item_logits_mask_padding_and_score_cold_start_items() -> None:
    model = make_model()
    hidden = model.last_hidden(*events(5))
    logits = model.item_logits(hidden)
    assert logits.shape == (1, N_ITEMS + 1) and logits[0, 0] == -math.inf
    extended = torch.cat([model.item_text, torch.randn(2, TEXT_DIM)])
    model.set_item_text_embeddings(extended)  # two new items, known only by their text
    assert model.item_logits(hidden).shape == (1, N_ITEMS + 3)


def test_time_features_buckets_and_hours() -> None:
    times = torch.tensor([[0.0, 0.0, 60.0, 3600.0 * 25 + 60.0]], dtype=torch.float64)
    gap_bucket, hour = time_features(times, gap_buckets=16)
    assert gap_bucket.tolist() == [[0, 1, 3, 9]]  # first, same second, a minute, a day
    assert hour.tolist() == [[0, 0, 0, 1]]


def test_a_single_event_history_has_one_time_feature_per_event() -> None:
    gap_bucket, hour = time_features(torch.tensor([[3600.0 * 5], [60.0]]), gap_buckets=16)
    assert gap_bucket.tolist() == [[0], [0]] and hour.tolist() == [[5], [0]]


def test_ranking_metrics_on_a_known_score_matrix() -> None:
    scores = torch.tensor([[-math.inf, 0.9, 0.8, 0.1, 0.0],  # target 1 ranked first
                           [-math.inf, 0.9, 0.8, 0.7, 0.0],  # target 3 ranked third
                           [-math.inf, 0.9, 0.8, 0.7, 0.0]])  # target 4 ranked fourth
    targets = torch.tensor([1, 3, 4])
    metrics = ranking_metrics(scores, targets, k=3)
    assert metrics["hr@3"] == pytest.approx(2 / 3)
    assert metrics["ndcg@3"] == pytest.approx((1.0 + 0.5) / 3)  # 1/log2(2), 1/log2(4)
    assert metrics["mrr@3"] == pytest.approx((1.0 + 1 / 3) / 3)
    masked = mask_history(scores, [np.array([2]), np.array([1, 2, 3]), np.array([])], targets)
    assert ranking_metrics(masked, targets, k=1)["hr@1"] == pytest.approx(2 / 3)


def synthetic_dataset(n_users: int = 12, per_user: int = 15) -> MovieLens:
    movies = [Movie(str(i), f"Movie {i}", 1990 + i % 10, ("Drama",) if i % 2 else ("Comedy",))
              for i in range(1, 41)]
    rng = np.random.default_rng(0)
    ratings = [Rating(str(u), str(int(rng.integers(1, 41))), 4.0, 880_000_000 + 60 * (t // 2))
               for u in range(n_users) for t in range(per_user)]
    return MovieLens(movies=movies, ratings=ratings, fingerprint="synthetic")


def test_split_keeps_ties_in_file_order_and_targets_out_of_training() -> None:
    dataset = synthetic_dataset()
    snapshot = dataset.snapshot()
    sequences = build_user_sequences(snapshot, build_vocab(snapshot))
    first = [int(r.item_id) for r in dataset.ratings if r.user_id == "0"]
    assert sequences[0].items.tolist() == first  # equal timestamps keep file order
    split = leave_one_out(sequences)
    assert split.train[0].items.tolist() == first[:-2]
    assert (split.valid_items[0], split.test_items[0]) == (first[-2], first[-1])
    assert split.test_inputs()[0].items.tolist() == first[:-1]
    windows = training_windows(split.train, max_len=5)
    assert len(windows) == 12 * math.ceil(12 / 5)
    assert popularity_scores(split, 40)[1:].sum() == 12 * 13  # training events only
    items, _ = last_window(split.train, max_len=5)
    assert items[0].tolist() == first[8:13]


def test_shuffle_ties_only_reorders_events_within_a_second() -> None:
    times = np.array([10.0, 10.0, 10.0, 11.0, 11.0, 20.0])
    seq = UserSequence("u", np.arange(1, 7), times)
    orders = set()
    for seed in range(20):
        (shuffled,) = shuffle_ties([seq], np.random.default_rng(seed))
        assert np.array_equal(shuffled.times, times)
        assert set(shuffled.items[:3]) == {1, 2, 3} and set(shuffled.items[3:5]) == {4, 5}
        assert shuffled.items[5] == 6
        orders.add(tuple(shuffled.items.tolist()))
    assert len(orders) > 1


def test_tiny_config_trains_and_its_loss_falls() -> None:
    config = RecommenderConfig.tiny()
    config.max_epochs, config.patience = 3, 3
    result = train_recommender(config, synthetic_dataset(30, 25).snapshot(),
                               torch.device("cpu"), seed=0, progress=False)
    losses = [h["train_loss"] for h in result.history if h.get("model") == "ours"]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert set(result.metrics) == {"ours", "sasrec_id", "pop"}
    for part in ("val", "test"):
        values = result.metrics["ours"][part]
        assert {"hr@10", "ndcg@10", "mrr@10", "ndcg@10_masked"} <= set(values)
        assert all(0.0 <= v <= 1.0 for v in values.values())
    assert result.item_text_embeddings.shape == (41, 384)
    assert torch.all(result.item_text_embeddings[0] == 0)


def test_the_inference_item_table_follows_weight_and_catalogue_changes() -> None:
    torch.manual_seed(0)
    model = SequenceInterestModel(SequenceModelConfig(hidden_size=8, num_layers=1, ff_size=16,
                                                      max_len=4), 5, 6)
    model.set_item_text_embeddings(torch.randn(6, 6))
    model.eval()
    with torch.no_grad():
        first = model.item_table()
        assert model.item_table() is first  # reused at inference
        model.item_embedding.weight.add_(1.0)  # an in-place update (an optimizer step)
        assert torch.allclose(model.item_table(), first + 1.0)
        model.set_item_text_embeddings(torch.randn(8, 6))  # cold-start rows appended
        assert model.item_table().shape == (8, 8)
    model.train()
    assert model.item_table().requires_grad  # training never sees a cached table


@pytest.mark.parametrize("content", [True, False])
def test_a_training_step_projects_only_the_rows_it_reads(content: bool) -> None:
    """item_rows in training equals the full table's rows (values and gradients) while
    projecting only the rows asked for; the loss over sampled negatives is the same either
    way."""
    model = make_model(use_text=content).train()
    rows = torch.tensor([[3, 1, 0], [7, 7, 2]])
    table = model._compute_item_table()
    picked = model.item_rows(rows)
    assert torch.allclose(picked, table[rows], atol=1e-6)
    picked.sum().backward()
    grad = model.item_embedding.weight.grad
    assert grad is not None
    touched = torch.zeros(N_ITEMS + 1, dtype=torch.bool)
    touched[rows.flatten()] = True
    assert bool((grad[~touched] == 0).all()) and bool((grad[touched] != 0).any())
    if content:
        calls: list[int] = []
        model.text_projection.register_forward_hook(  # type: ignore[union-attr]
            lambda _m, inputs, _o: calls.append(inputs[0].shape[0]))
        model.item_rows(torch.tensor([4, 5]))
        assert calls == [2]  # two rows projected, not the catalogue's N_ITEMS + 1


def test_a_model_built_around_a_shared_text_table_holds_no_copy_of_it() -> None:
    table = torch.cat([torch.zeros(1, TEXT_DIM), torch.randn(N_ITEMS, TEXT_DIM)])
    torch.manual_seed(0)
    shared = SequenceInterestModel(SequenceModelConfig(max_len=12), N_ITEMS, TEXT_DIM,
                                   item_text=table)
    assert shared.item_text.data_ptr() == table.data_ptr()
    set_later = make_model()  # the same seed, the table set after construction
    set_later.set_item_text_embeddings(table, copy=False)
    for (name, mine), (_, theirs) in zip(shared.state_dict().items(),
                                         set_later.state_dict().items(), strict=True):
        assert torch.equal(mine, theirs), name
    with pytest.raises(ValueError):
        SequenceInterestModel(SequenceModelConfig(max_len=12), N_ITEMS, TEXT_DIM,
                              item_text=torch.zeros(3, TEXT_DIM))
