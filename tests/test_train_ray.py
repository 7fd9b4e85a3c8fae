"""Ray Train (issue 17): the sequence model trained data-parallel (TorchTrainer, DDP on gloo,
2 workers of a local cluster) reaches what one process reaches on the same tiny split and seed.

Not skipped: `ray` is in the `ray` extra, which `make test` installs (requirements-dev.lock).
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from app.ml.sequence import SequenceInterestModel
from training.recommender import RecommenderConfig, prepare_split
from training.sequence_trainer import train_sequence_model, window_loss

SEED = 7
TEXT_DIM = 384


def _model(n_items: int, config: RecommenderConfig) -> SequenceInterestModel:
    torch.manual_seed(SEED)
    model = SequenceInterestModel(config.model_config(True), n_items, TEXT_DIM)
    model.set_item_text_embeddings(torch.randn(n_items + 1, TEXT_DIM,
                                               generator=torch.Generator().manual_seed(SEED)))
    return model


def test_two_ray_train_workers_match_one_process_on_the_tiny_split() -> None:
    import ray

    from tests.conftest import tiny_users_data
    from training.distributed import train_sequence_model_ray

    dataset, _, _ = tiny_users_data()
    # a sampled softmax, as configs/ml1m.yaml trains: both paths must optimise that loss (the
    # Ray path once ignored it and trained a full softmax, whose loss is far from this one's)
    config = replace(RecommenderConfig.tiny(), loss_negatives=8)
    vocab, split = prepare_split(dataset.snapshot(), config.max_users)
    cpu = torch.device("cpu")
    single = train_sequence_model(_model(vocab.n_items, config), split, config.train_config(),
                                  cpu, SEED, progress=False)
    try:
        ray_run = train_sequence_model_ray(_model(vocab.n_items, config), split,
                                           config.train_config(), cpu, SEED, progress=False,
                                           workers=2)
    finally:
        ray.shutdown()
    assert len(ray_run.history) == len(single.history) == 1
    # the same batches and steps: the losses agree closely; validation within noise
    assert math.isclose(ray_run.history[0]["train_loss"], single.history[0]["train_loss"],
                        rel_tol=0.05)
    assert ray_run.best_val == pytest.approx(single.best_val, abs=0.05)
    changed = any(not torch.equal(a, b) for a, b in zip(
        ray_run.model.state_dict().values(), _model(vocab.n_items, config).state_dict().values(),
        strict=True))
    assert changed  # the returned weights are the trained ones


def test_the_ddp_loss_module_is_the_configured_loss() -> None:
    """What Ray's ranks differentiate (WindowLoss, the module DDP wraps) is window_loss with the
    config's negatives and the trainer's generator: sampled and full softmax differ."""
    from training.distributed import WindowLoss

    config = RecommenderConfig.tiny()
    model = _model(30, config).eval()  # no dropout: two calls see the same network
    items = torch.randint(1, 31, (4, 6), generator=torch.Generator().manual_seed(1))
    times = torch.arange(24, dtype=torch.float64).reshape(4, 6) * 60.0 + 1.7e9
    targets = torch.roll(items, -1, dims=1)
    wrapped = WindowLoss(model)
    for negatives in (0, 5):
        expected = window_loss(model, items, times, targets, negatives,
                               torch.Generator().manual_seed(3))
        got = wrapped(items, times, targets, negatives, torch.Generator().manual_seed(3))
        assert torch.equal(got, expected)
    full = wrapped(items, times, targets, 0, torch.Generator().manual_seed(3))
    sampled = wrapped(items, times, targets, 5, torch.Generator().manual_seed(3))
    assert not torch.isclose(full, sampled)
