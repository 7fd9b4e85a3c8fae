"""Sampled-softmax loss, the sasrec_id epoch cap, and resuming an interrupted run from its
checkpoints (the encoder's and each sequence model's, written every epoch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from app.ml.sequence import SequenceInterestModel, SequenceModelConfig
from tests.test_sequence_model import synthetic_dataset
from training.data.sequences import build_user_sequences, build_vocab, leave_one_out
from training.recommender import RecommenderConfig, train_recommender
from training.sequence_trainer import SequenceTrainConfig, train_sequence_model, window_loss


def small_model(seed: int = 0) -> SequenceInterestModel:
    torch.manual_seed(seed)
    model = SequenceInterestModel(SequenceModelConfig(hidden_size=16, num_layers=1, ff_size=32,
                                                      max_len=10), 40, 6)
    model.set_item_text_embeddings(torch.cat([torch.zeros(1, 6), torch.randn(40, 6)]))
    return model


def small_split():  # type: ignore[no-untyped-def]
    snapshot = synthetic_dataset(20, 25).snapshot()
    return leave_one_out(build_user_sequences(snapshot, build_vocab(snapshot)))


def test_sampled_softmax_masks_draws_of_the_target_and_covers_the_full_loss() -> None:
    model = small_model()
    items = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    times = torch.arange(8, dtype=torch.float64).view(2, 4) * 60.0
    targets = torch.tensor([[2, 3, 4, 0], [5, 6, 0, 0]])
    model.eval()
    full = window_loss(model, items, times, targets)
    # With more draws than items every item is drawn: the sampled loss can only sit above the
    # full one by the duplicates' weight, and stays finite though targets are drawn too.
    sampled = window_loss(model, items, times, targets, 4000, torch.Generator().manual_seed(0))
    assert torch.isfinite(sampled) and sampled > full
    few = window_loss(model, items, times, targets, 3, torch.Generator().manual_seed(0))
    assert torch.isfinite(few) and few < full  # 4 candidates: far easier than 41
    few.backward()
    assert model.item_embedding.weight.grad is not None


def test_an_interrupted_run_resumes_from_its_checkpoint_and_matches(tmp_path: Path) -> None:
    split = small_split()
    config = SequenceTrainConfig(batch_size=8, max_epochs=3, patience=5, average_top_k=2,
                                 loss_negatives=5)
    whole = train_sequence_model(small_model(), split, config, torch.device("cpu"), 3,
                                 progress=False)
    checkpoint = tmp_path / "ours.pt"
    first = SequenceTrainConfig(**{**config.__dict__, "max_epochs": 2})  # "killed" after 2
    train_sequence_model(small_model(), split, first, torch.device("cpu"), 3, progress=False,
                         checkpoint=checkpoint)
    assert torch.load(checkpoint, weights_only=False)["epoch"] == 2
    said: list[str] = []
    resumed = train_sequence_model(small_model(seed=9), split, config, torch.device("cpu"), 3,
                                   progress=False, checkpoint=checkpoint, log=said.append)
    assert any("resumed" in line and "after epoch 2" in line for line in said)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert [h["train_loss"] for h in resumed.history] == pytest.approx(
        [h["train_loss"] for h in whole.history], abs=1e-6)
    for key, value in whole.model.state_dict().items():
        assert torch.allclose(value, resumed.model.state_dict()[key], atol=1e-6), key
    # A finished run is read back, not trained again; another setting starts afresh.
    said.clear()
    again = train_sequence_model(small_model(), split, config, torch.device("cpu"), 3,
                                 progress=False, checkpoint=checkpoint, log=said.append)
    assert len(again.history) == 3 and len(said) == 1 and said[0].startswith("ours: resumed")
    said.clear()
    other = SequenceTrainConfig(**{**config.__dict__, "learning_rate": 5e-3})
    fresh = train_sequence_model(small_model(), split, other, torch.device("cpu"), 3,
                                 progress=False, checkpoint=checkpoint, log=said.append)
    assert not any("resumed" in line for line in said) and len(fresh.history) == 3


def test_the_tiny_recommender_resumes_every_stage_from_its_checkpoints(tmp_path: Path) -> None:
    config = RecommenderConfig.tiny()
    config.max_epochs, config.patience, config.loss_negatives = 2, 2, 8
    config.baseline_max_epochs = 1
    snapshot = synthetic_dataset(30, 25).snapshot()
    first = train_recommender(config, snapshot, torch.device("cpu"), 0, progress=False,
                              checkpoint_dir=tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"encoder.pt", "ours.pt", "sasrec_id.pt"}
    assert first.timings["ours_epochs"] == 2 and first.timings["sasrec_id_epochs"] == 1
    said: list[str] = []
    second = train_recommender(config, snapshot, torch.device("cpu"), 0, progress=False,
                               checkpoint_dir=tmp_path, log=said.append)
    assert sum("resumed" in line for line in said) == 3  # encoder, ours, sasrec_id
    assert torch.equal(first.item_text_embeddings, second.item_text_embeddings)
    for name in ("ours", "sasrec_id"):
        assert second.metrics[name]["test"] == pytest.approx(first.metrics[name]["test"])
    assert np.isfinite(second.metrics["ours"]["test"]["ndcg@10"])
