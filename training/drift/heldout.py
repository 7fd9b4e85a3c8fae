"""The held-out sequence model of the drift protocol's "unseen" view.

A drift detector that reads the sequence model's surprise looks better on users that model
trained on: it memorised their events, so a splice stands out. Every user in serving is new to
the served model, so the protocol also scores the evaluation users through a sequence model
fitted without them (and without the calibration users): the same architecture and recipe,
trained on the head-training users' training portions only, with a shorter schedule
(``DriftConfig.heldout_max_epochs`` / ``heldout_patience``) to keep the run a few minutes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np
import torch

from app.ml.sequence import SequenceInterestModel, SequenceModelConfig
from training.budget import Deadline
from training.data.sequences import LeaveOneOutSplit
from training.drift.config import DriftConfig
from training.drift.pipeline import HeldOutScorer
from training.sequence_trainer import SequenceTrainConfig, train_sequence_model


def subset_split(split: LeaveOneOutSplit, user_ids: Sequence[str]) -> LeaveOneOutSplit:
    """The split restricted to ``user_ids`` (same order as ``split``)."""
    keep = set(user_ids)
    rows = np.asarray([i for i, u in enumerate(split.train) if u.user_id in keep],
                      dtype=np.int64)
    return LeaveOneOutSplit(
        train=[split.train[i] for i in rows], valid_items=split.valid_items[rows],
        valid_times=split.valid_times[rows], test_items=split.test_items[rows],
        test_times=split.test_times[rows])


def heldout_scorer(split: LeaveOneOutSplit, model_config: SequenceModelConfig, n_items: int,
                   item_text: torch.Tensor, train_config: SequenceTrainConfig,
                   drift: DriftConfig, device: torch.device, seed: int,
                   progress: bool = False, log: dict[str, float] | None = None,
                   deadline: Deadline | None = None) -> HeldOutScorer:
    """A function that fits a fresh sequence model on the given users only (validation on
    their own second-last events) and returns it in eval mode. ``log`` receives
    ``heldout_seconds``, ``heldout_epochs`` and ``heldout_val_ndcg10`` of the last fit.
    ``deadline``: the fit stops after the epoch that ends past it (training.budget)."""
    schedule = dataclasses.replace(train_config, max_epochs=drift.heldout_max_epochs,
                                   patience=drift.heldout_patience)

    def fit(user_ids: list[str]) -> SequenceInterestModel:
        start = time.perf_counter()
        torch.manual_seed(seed)
        model = SequenceInterestModel(model_config, n_items, item_text.shape[1],
                                      item_text=item_text)  # a constant, shared table
        run = train_sequence_model(model, subset_split(split, user_ids), schedule, device,
                                   seed, progress, name="heldout", deadline=deadline)
        if log is not None:
            log.update(heldout_seconds=time.perf_counter() - start,
                       heldout_epochs=float(len(run.history)), heldout_val_ndcg10=run.best_val)
        return run.model.eval()

    return fit
