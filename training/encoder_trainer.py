"""Contrastive fine-tuning of the item text encoder on co-consumed item pairs.

Positive pairs are items that a user consumed close together (within ``window`` events) in
the TRAINING part of their sequence only -- validation and test items never form a pair, so
nothing about the held-out targets reaches the encoder. Loss: symmetric in-batch InfoNCE.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from app.ml.device import autocast_context
from app.ml.encoder import ItemTextEncoder
from training.budget import Deadline
from training.data.sequences import UserSequence


@dataclass
class EncoderTrainConfig:
    """Fine-tuning settings (the defaults take about 2 minutes on 2 CPU cores for ml-100k)."""

    steps: int = 60  # optimisation steps (0 = keep the pre-trained encoder)
    batch_pairs: int = 96  # positive pairs per step; the other pairs are the negatives
    window: int = 3  # partner = one of the next `window` training events of the same user
    learning_rate: float = 5e-5
    temperature: float = 0.05
    freeze_word_embeddings: bool = True  # 11.7M rarely-used rows: slow to update, easy to overfit


@dataclass
class EncoderTrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    stopped_by_deadline: bool = False  # the time budget ended fine-tuning before `steps`


def cooccurrence_pairs(sequences: list[UserSequence], window: int) -> np.ndarray:
    """All (item, later item) pairs at most ``window`` events apart within each sequence,
    excluding an item paired with itself: int64 [P, 2] of item indices."""
    pairs = []
    for seq in sequences:
        for offset in range(1, window + 1):
            if len(seq.items) > offset:
                pairs.append(np.stack([seq.items[:-offset], seq.items[offset:]], axis=1))
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    stacked = np.concatenate(pairs)
    return stacked[stacked[:, 0] != stacked[:, 1]]


def info_nce(left: torch.Tensor, right: torch.Tensor, left_ids: torch.Tensor,
             right_ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric in-batch InfoNCE. left/right: unit-norm [B, D]; *_ids: [B] item indices.

    A column holding the same item as the positive (a duplicate in the batch) is masked out
    rather than counted as a negative.
    """
    logits = left @ right.t() / temperature  # [B, B]
    diagonal = torch.eye(len(left), dtype=torch.bool, device=left.device)
    same = (right_ids.unsqueeze(0) == right_ids.unsqueeze(1)) & ~diagonal
    same_t = (left_ids.unsqueeze(0) == left_ids.unsqueeze(1)) & ~diagonal
    labels = torch.arange(len(left), device=left.device)
    loss_lr = F.cross_entropy(logits.masked_fill(same, -torch.inf), labels)
    loss_rl = F.cross_entropy(logits.t().masked_fill(same_t, -torch.inf), labels)
    return (loss_lr + loss_rl) / 2


def finetune_encoder(encoder: ItemTextEncoder, item_texts: list[str],
                     train_sequences: list[UserSequence], config: EncoderTrainConfig,
                     device: torch.device, seed: int, progress: bool = True,
                     deadline: Deadline | None = None) -> EncoderTrainResult:
    """Fine-tune ``encoder`` in place. ``item_texts[i - 1]`` is the text of item index i;
    ``train_sequences`` must be the training parts of the split (never valid/test items).
    ``deadline``: no step starts past it (recorded on it as the "encoder" stage)."""
    start = time.perf_counter()
    pairs = cooccurrence_pairs(train_sequences, config.window)
    result = EncoderTrainResult()
    if config.steps <= 0 or len(pairs) == 0:
        return result
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    encoder.to(device).train()
    embeddings = encoder.model.get_input_embeddings()
    embeddings.weight.requires_grad_(not config.freeze_word_embeddings)
    params = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.01)
    for step in tqdm(range(1, config.steps + 1), desc="encoder", disable=not progress):
        if deadline is not None and deadline.expired():
            result.stopped_by_deadline = True
            deadline.record_stop("encoder")
            break
        batch = pairs[rng.choice(len(pairs), size=min(config.batch_pairs, len(pairs)),
                                 replace=False)]
        # Embed each distinct item once per step, then gather both sides of the pairs.
        unique, inverse = np.unique(batch, return_inverse=True)
        with autocast_context(device):
            vectors = encoder.encode([item_texts[i - 1] for i in unique])
        inverse_t = torch.from_numpy(inverse.reshape(batch.shape)).to(device)
        ids = torch.from_numpy(batch).to(device)
        loss = info_nce(vectors[inverse_t[:, 0]], vectors[inverse_t[:, 1]], ids[:, 0], ids[:, 1],
                        config.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        result.history.append({"model": "encoder", "step": step, "loss": float(loss.detach())})
    embeddings.weight.requires_grad_(True)
    encoder.eval()
    result.seconds = time.perf_counter() - start
    return result
