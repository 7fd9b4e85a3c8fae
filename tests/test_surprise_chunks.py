"""The drift features' surprise over a large catalogue (issue 17): taken a slice of the item
table at a time, it equals the one-matrix computation, without holding states x items."""

from __future__ import annotations

import pytest
import torch

from app.ml import drift_head
from app.ml.drift_head import drift_features, next_item_surprise
from app.ml.sequence import SequenceInterestModel, SequenceModelConfig

N_ITEMS = 3_000


def _model() -> SequenceInterestModel:
    torch.manual_seed(0)
    config = SequenceModelConfig(hidden_size=16, num_layers=1, num_heads=2, ff_size=32,
                                 max_len=30)
    model = SequenceInterestModel(config, N_ITEMS, text_dim=8)
    text = torch.randn(N_ITEMS + 1, 8)
    text[0] = 0
    model.set_item_text_embeddings(text)
    return model.eval()


def test_a_slice_at_a_time_gives_the_whole_matrix_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(5, 7, 16, generator=generator) * 3
    targets = torch.randint(1, N_ITEMS + 1, (5, 7), generator=generator)
    whole = next_item_surprise(model, hidden, targets)
    # blocks of 16 states, slices of 1,024 items: the target falls in every slice position,
    # the padding in the first
    monkeypatch.setattr(drift_head, "SURPRISE_WHOLE_MAX_ROWS", 1024)
    monkeypatch.setattr(drift_head, "SURPRISE_SLICE", (16, 1024))
    sliced = next_item_surprise(model, hidden, targets)
    assert torch.allclose(sliced[0], whole[0], atol=1e-4)
    assert torch.allclose(sliced[1], whole[1], atol=1e-3)
    assert whole[0].min() > 0 and whole[1].max() <= 1  # a real spread, not all equal
    assert whole[1].std() > 0.05


def test_drift_features_are_the_same_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    generator = torch.Generator().manual_seed(2)
    idx = torch.randint(1, N_ITEMS + 1, (3, 25), generator=generator)
    idx[2, 20:] = 0  # a shorter history, right-padded
    times = torch.arange(25, dtype=torch.float64).repeat(3, 1) * 3600 + 1e9
    whole = drift_features(model, idx, times)
    monkeypatch.setattr(drift_head, "SURPRISE_WHOLE_MAX_ROWS", 1024)
    monkeypatch.setattr(drift_head, "SURPRISE_SLICE", (32, 512))
    sliced = drift_features(model, idx, times)
    real = (idx > 0).unsqueeze(-1).expand_as(whole)
    assert torch.allclose(sliced[real], whole[real], atol=1e-3)
