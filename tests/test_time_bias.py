"""The relative attention bias of the sequence model (time gaps and positions, HSTU-style):
off means the old model exactly; on, it changes scores; the "request" variant reads the request
time (the target's time in training) and nothing else of the target; the request-time interval
a remembered ranking holds for."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from app.ml.sequence import (
    SequenceInterestModel,
    SequenceModelConfig,
    gap_bucket_matrix,
    next_event_times,
    request_bucket_interval,
)
from training.data.sequences import UserSequence, leave_one_out, training_windows
from training.evaluate import score_sequences
from training.sequence_trainer import window_loss

N_ITEMS, TEXT_DIM = 30, 8


def make_model(seed: int = 0, **overrides: object) -> SequenceInterestModel:
    torch.manual_seed(seed)
    config = SequenceModelConfig(max_len=12, **overrides)  # type: ignore[arg-type]
    model = SequenceInterestModel(config, N_ITEMS, TEXT_DIM)
    model.set_item_text_embeddings(torch.cat([torch.zeros(1, TEXT_DIM),
                                              torch.randn(N_ITEMS, TEXT_DIM)]))
    return model.eval()


def strong_biases(model: SequenceInterestModel, seed: int = 3) -> SequenceInterestModel:
    """Bias tables far from their N(0, 0.02) start, so that they move the scores."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.blocks:
            bias = block.attention.bias
            assert bias is not None
            for table in (bias.time, bias.position):
                if table is not None:
                    table.weight.copy_(3.0 * torch.randn(table.weight.shape, generator=generator))
    return model


def events(length: int, seed: int = 1, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    items = torch.randint(1, N_ITEMS + 1, (batch, length), generator=generator)
    gaps = torch.randint(0, 200_000, (batch, length), generator=generator).double()
    return items, 880_000_000.0 + gaps.cumsum(dim=1)


def test_buckets_follow_the_hstu_rule() -> None:
    """floor(ln(gap) / 0.301) for gaps of a second and more (RecTools' quantisation), 0 below,
    negative gaps as 0, the last bucket holding everything longer."""
    gaps = np.array([0.0, 0.5, 1.0, 2.0, 60.0, 3600.0, 86_400.0, 3.2e7, 1e30])
    query = torch.tensor([[1e9 + g for g in gaps]], dtype=torch.float64)
    buckets = gap_bucket_matrix(query, torch.full_like(query, 1e9), n_buckets=64)[0, :, 0]
    expected = [min(64, math.floor(math.log(max(1.0, g)) / 0.301)) for g in gaps[:-1]]
    assert buckets.tolist() == [*expected, 64]
    assert expected[4:8] == [13, 27, 37, 57]  # a minute, an hour, a day, a year
    behind = gap_bucket_matrix(torch.tensor([[0.0]]), torch.tensor([[100.0]]), 64)
    assert behind.item() == 0


def test_bias_off_is_the_model_of_before() -> None:
    """No new parameters, the same initial weights and bit-identical outputs whatever the new
    fields' values when the bias is off (old bundles have none of these keys)."""
    old = make_model()
    explicit = make_model(time_bias="off", position_bias=False, bias_buckets=7)
    assert old.state_dict().keys() == explicit.state_dict().keys()
    assert not any("bias.time" in k or "bias.position" in k for k in old.state_dict())
    items, times = events(12)
    with torch.no_grad():
        assert torch.equal(old(items, times), explicit(items, times))
        assert torch.equal(old.last_hidden(items, times),
                           old.last_hidden(items, times, at=times[:, -1] + 9e5))


@pytest.mark.parametrize("overrides", [{"time_bias": "event"}, {"time_bias": "request"},
                                       {"position_bias": True},
                                       {"time_bias": "request", "position_bias": True}])
def test_a_zero_bias_changes_nothing_and_a_learned_one_changes_scores(
        overrides: dict[str, object]) -> None:
    base = make_model()
    biased = make_model(**overrides)
    state = {k: v for k, v in biased.state_dict().items() if k in base.state_dict()}
    biased.load_state_dict({**biased.state_dict(), **base.state_dict()})
    assert state.keys() == base.state_dict().keys()
    with torch.no_grad():
        for block in biased.blocks:
            for table in (block.attention.bias.time, block.attention.bias.position):
                if table is not None:
                    table.weight.zero_()
        items, times = events(12, batch=3)
        at = times[:, -1] + 5_000.0
        assert torch.allclose(base.last_hidden(items, times),
                              biased.last_hidden(items, times, at), atol=1e-5)
        strong_biases(biased)
        assert not torch.allclose(base.last_hidden(items, times),
                                  biased.last_hidden(items, times, at), atol=1e-3)


def test_causal_with_the_bias_and_the_request_time_only_moves_the_last_state() -> None:
    model = strong_biases(make_model(time_bias="request", position_bias=True))
    items, times = events(10)
    changed_items, changed_times = items.clone(), times.clone()
    changed_items[0, 6:] = (changed_items[0, 6:] % N_ITEMS) + 1
    changed_times[0, 6:] += 5_000.0
    with torch.no_grad():
        before, after = model(items, times), model(changed_items, changed_times)
        assert torch.allclose(before[0, :6], after[0, :6], atol=1e-5)
        # the request time enters through the last event's query only
        lengths = torch.tensor([10])
        soon = model(items, times, next_event_times(times, lengths, times[:, -1] + 10.0))
        later = model(items, times, next_event_times(times, lengths, times[:, -1] + 9e6))
    assert torch.allclose(soon[0, :9], later[0, :9], atol=1e-6)
    assert not torch.allclose(soon[0, 9], later[0, 9], atol=1e-3)


def test_next_event_times_shift_and_end_at_the_request() -> None:
    times = torch.tensor([[10.0, 20.0, 30.0, 0.0], [5.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    query = next_event_times(times, torch.tensor([3, 1]), torch.tensor([99.0, 7.0]))
    assert query.tolist() == [[20.0, 30.0, 99.0, 0.0], [7.0, 0.0, 0.0, 0.0]]


def test_event_variant_ignores_the_request_time_and_request_variant_reads_it() -> None:
    items, times = events(9, batch=2)
    soon, later = times[:, -1] + 30.0, times[:, -1] + 4e6
    with torch.no_grad():
        event = strong_biases(make_model(time_bias="event"))
        assert torch.equal(event.last_hidden(items, times, soon),
                           event.last_hidden(items, times, later))
        request = strong_biases(make_model(time_bias="request"))
        assert not torch.allclose(request.last_hidden(items, times, soon),
                                  request.last_hidden(items, times, later), atol=1e-3)
        # a time before the last event counts as the last event's; no time: the last event's
        earlier = times[:, -1] - 1e5
        assert torch.equal(request.last_hidden(items, times, earlier),
                           request.last_hidden(items, times))


def test_training_windows_carry_the_targets_times_and_the_loss_reads_them() -> None:
    """Windows carry each target's time (only the time: forward never sees the targets); the
    loss of a "request" model changes with those times."""
    seq = UserSequence("u", np.arange(1, 8), 1e9 + np.array([0, 5, 5, 60, 3600, 4000, 9e4]))
    windows = training_windows([seq], max_len=4)
    assert windows.targets.tolist() == [[4, 5, 6, 7], [2, 3, 0, 0]]
    assert windows.target_times.tolist() == [[1e9 + 60, 1e9 + 3600, 1e9 + 4000, 1e9 + 9e4],
                                             [1e9 + 5, 1e9 + 5, 0.0, 0.0]]
    model = strong_biases(make_model(time_bias="request"))
    items, times, targets = windows.items, windows.times, windows.targets
    with torch.no_grad():
        loss = window_loss(model, items, times, targets, target_times=windows.target_times)
        moved = windows.target_times.clone()
        moved[0, 2] = times[0, 2] + 0.5  # the last key's gap changes bucket, the others' not
        assert window_loss(model, items, times, targets, target_times=moved) != loss
        event = strong_biases(make_model(time_bias="event"))
        own = window_loss(event, items, times, targets, target_times=windows.target_times)
        assert window_loss(event, items, times, targets, target_times=moved) == own


def test_evaluation_scores_at_the_held_out_events_time_only() -> None:
    """score_sequences with at = the test events' times: scores change with those times and
    are the same whatever the test items are (their identities never reach the model)."""
    rng = np.random.default_rng(0)
    sequences = [UserSequence(str(u), rng.integers(1, N_ITEMS + 1, 15),
                              np.sort(1e9 + rng.integers(0, 10**6, 15)).astype(np.float64))
                 for u in range(5)]
    split = leave_one_out(sequences)
    model = strong_biases(make_model(time_bias="request"))
    inputs = split.test_inputs()
    at_test = score_sequences(model, inputs, torch.device("cpu"), at=split.test_times)
    swapped = leave_one_out([UserSequence(s.user_id, np.append(s.items[:-1], 1), s.times)
                             for s in sequences])
    assert torch.equal(at_test, score_sequences(model, swapped.test_inputs(),
                                                torch.device("cpu"), at=swapped.test_times))
    later = score_sequences(model, inputs, torch.device("cpu"), at=split.test_times + 3e7)
    assert not torch.allclose(at_test, later)


def test_bias_state_round_trips_through_a_bundle_part(tmp_path: Path) -> None:
    model = strong_biases(make_model(time_bias="request", position_bias=True))
    config = model.save_part(tmp_path)
    assert config["sequence_config"]["time_bias"] == "request"
    loaded = SequenceInterestModel.load_part(tmp_path, config, 1, torch.device("cpu")).eval()
    items, times = events(12, batch=2)
    at = times[:, -1] + 777.0
    with torch.no_grad():
        assert torch.equal(loaded.last_hidden(items, times, at),
                           model.last_hidden(items, times, at))


def test_a_bad_time_bias_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="time_bias"):
        SequenceModelConfig(time_bias="target")
    with pytest.raises(ValueError, match="bias_buckets"):
        SequenceModelConfig(bias_buckets=0)


def test_the_request_interval_holds_the_ranking_and_ends_where_a_bucket_changes() -> None:
    model = strong_biases(make_model(time_bias="request"))
    items, times = events(12)
    key_times = times[0].numpy()
    rng = np.random.default_rng(5)
    for at in (key_times[-1] + 0.2, key_times[-1] + 50.0, key_times[-1] + 4e4,
               key_times[-1] + 3e7):
        start, end = request_bucket_interval(key_times, at, model.config.bias_buckets)
        assert start <= at < end
        reference = gap_bucket_matrix(torch.tensor([[at]], dtype=torch.float64), times, 64)
        with torch.no_grad():
            scores = model.item_logits(model.last_hidden(items, times, torch.tensor([at])))
            inside = [at, *rng.uniform(max(start, key_times[-1]), end, 5)]
            for when in inside:
                again = model.item_logits(model.last_hidden(items, times, torch.tensor([when])))
                assert torch.equal(again, scores), (at, when)
        past = gap_bucket_matrix(torch.tensor([[end + 0.01]], dtype=torch.float64), times, 64)
        assert not torch.equal(past, reference)  # just past the end: some gap changed bucket
    start, _ = request_bucket_interval(key_times, key_times[-1] - 10.0, 64)
    assert start == -math.inf  # every time before the last event ranks as the last event


def test_a_checkpoint_from_before_the_bias_settings_resumes_only_without_a_bias() -> None:
    """A run's setting written before the bias fields existed (no such keys in its model
    config) matches a bias-off model, never a biased one."""
    from dataclasses import asdict

    from training.sequence_trainer import BIAS_FIELDS, _resumable

    def setting(config: SequenceModelConfig) -> dict[str, object]:
        return {"name": "sasrec_id", "seed": 1, "train": {"max_epochs": 6},
                "model": asdict(config), "n_items": 5, "users": 3}

    old = setting(SequenceModelConfig())
    for key in BIAS_FIELDS:
        old["model"].pop(key)  # type: ignore[attr-defined]
    assert _resumable(setting(SequenceModelConfig())) == _resumable(old)
    assert _resumable(setting(SequenceModelConfig(time_bias="request"))) != _resumable(old)
    assert _resumable(setting(SequenceModelConfig(position_bias=True))) != _resumable(old)


@pytest.mark.parametrize("overrides", [{"time_bias": "event"}, {"position_bias": True},
                                       {"time_bias": "request", "position_bias": True}])
def test_the_last_state_shortcut_equals_the_full_pass(overrides: dict[str, object]) -> None:
    """At inference a biased model runs its last block at the last position only; that state
    is the full forward pass's there, for padded batches of different lengths."""
    model = strong_biases(make_model(**overrides))
    items, times = events(12, batch=4)
    items[1, 7:] = 0
    items[2, 1:] = 0
    lengths = (items > 0).sum(dim=1)
    at = times[torch.arange(4), lengths - 1] + torch.tensor([1.0, 60.0, 4e4, 9e6],
                                                           dtype=torch.float64)
    query = next_event_times(times, lengths, at) if model.uses_request_time else None
    with torch.no_grad():
        full = model(items, times, query)[torch.arange(4), lengths - 1]
        assert torch.allclose(model.last_hidden(items, times, at), full, atol=1e-5)
