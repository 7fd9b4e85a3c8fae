"""Ray Train (issue 17): the sequence model trained data-parallel (TorchTrainer, DDP on gloo,
2 workers of a local cluster) reaches what one process reaches on the same tiny split and seed.

Not skipped: `ray` is in the `ray` extra, which `make test` installs (requirements.lock).
"""

from __future__ import annotations

import math

import pytest
import torch

from app.ml.sequence import SequenceInterestModel
from training.recommender import RecommenderConfig, prepare_split
from training.sequence_trainer import train_sequence_model

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
    config = RecommenderConfig.tiny()
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
