"""Evaluation in blocks of users gives the figures of one whole score matrix (a million-item
catalogue is never scored for every user at once)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_sequence_model import synthetic_dataset
from training import evaluate
from training.data.sequences import build_user_sequences, build_vocab, leave_one_out
from training.evaluate import all_metrics, evaluate_popularity, popularity_scores


def test_blocks_of_users_give_the_whole_matrix_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = synthetic_dataset().snapshot()
    split = leave_one_out(build_user_sequences(snapshot, build_vocab(snapshot)))
    n_items = len(snapshot.item_ids)
    scores = popularity_scores(split, n_items)
    inputs = split.valid_inputs()
    whole = all_metrics(scores.unsqueeze(0).expand(len(inputs), -1).clone(), inputs,
                        split.valid_items)
    monkeypatch.setattr(evaluate, "block_rows", lambda _columns: 5)  # 12 users: 5 + 5 + 2
    blocked = evaluate_popularity(split, n_items)["val"]
    assert blocked.keys() == whole.keys()
    for key, value in whole.items():
        assert blocked[key] == pytest.approx(value, abs=1e-12)
    assert 0.0 < whole["hr@10"] <= 1.0 and np.isfinite(whole["ndcg@10_masked"])
    assert torch.isinf(scores[0])
