"""Full-ranking next-item metrics (HR@k, NDCG@k, MRR@k) on the leave-one-out split.

Every catalogue item is ranked (no negative sampling). Two variants are reported: unmasked
(plain keys, the protocol of the SASRec anchor) and with the user's history masked
(``*_masked``, the protocol of RecBole's published non-sequential rows). The sequence model is
scored through its own ``last_hidden`` + ``item_logits``, the same calls serving makes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from app.ml.device import autocast_context
from app.ml.sequence import SequenceInterestModel
from training.data.sequences import LeaveOneOutSplit, UserSequence, last_window

Metrics = dict[str, float]
# Users x (items + 1) scores held at once (a block of users): about 25 bytes a cell live while
# a block is ranked (bench/results/plan_memory.json), so a block stays under 1 GiB. Below it,
# at ml-100k and ML-1M sizes, every user is one block, as before blocks existed.
EVAL_BLOCK_CELLS = 1 << 25


def rank_of_targets(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target: the number of items scored strictly higher.

    scores: [U, N+1] (column 0 = padding, -inf); targets: int64 [U] -> int64 [U].
    """
    target_scores = scores.gather(1, targets.unsqueeze(1))
    return (scores > target_scores).sum(dim=1)


def ranking_metrics(scores: torch.Tensor, targets: torch.Tensor, k: int = 10,
                    suffix: str = "") -> Metrics:
    """Mean HR@k, NDCG@k (one relevant item: 1/log2(rank+2)) and MRR@k over users."""
    ranks = rank_of_targets(scores.float(), targets).double()
    hit = ranks < k
    ndcg = torch.where(hit, 1.0 / torch.log2(ranks + 2.0), torch.zeros_like(ranks))
    mrr = torch.where(hit, 1.0 / (ranks + 1.0), torch.zeros_like(ranks))
    return {f"hr@{k}{suffix}": float(hit.double().mean()),
            f"ndcg@{k}{suffix}": float(ndcg.mean()),
            f"mrr@{k}{suffix}": float(mrr.mean())}


def mask_history(scores: torch.Tensor, histories: list[np.ndarray],
                 targets: torch.Tensor) -> torch.Tensor:
    """Copy of scores [U, N+1] with each user's history items set to -inf (the target itself
    is never masked, so a re-consumed item can still be found)."""
    masked = scores.clone()
    for row, history in enumerate(histories):
        masked[row, torch.as_tensor(history, dtype=torch.long)] = -math.inf
    rows = torch.arange(len(targets))
    masked[rows, targets] = scores[rows, targets]
    return masked


def all_metrics(scores: torch.Tensor, inputs: list[UserSequence], targets: np.ndarray,
                k: int = 10) -> Metrics:
    """Unmasked and history-masked metrics for one set of predictions."""
    target_tensor = torch.from_numpy(targets)
    metrics = ranking_metrics(scores, target_tensor, k)
    masked = mask_history(scores, [seq.items for seq in inputs], target_tensor)
    metrics.update(ranking_metrics(masked, target_tensor, k, suffix="_masked"))
    return metrics


def block_rows(n_columns: int, cells: int = EVAL_BLOCK_CELLS) -> int:
    """Users per block when each has ``n_columns`` scores."""
    return max(1, cells // max(n_columns, 1))


def blocked_metrics(score: Callable[[int, int], torch.Tensor], inputs: Sequence[UserSequence],
                    targets: np.ndarray, n_columns: int, k: int = 10) -> Metrics:
    """``all_metrics`` over the users in blocks: ``score(start, stop)`` gives the [stop -
    start, n_columns] scores of those users. The metrics are means over users, so the
    block means weighted by block size are the same figures; with one block it is
    ``all_metrics`` itself."""
    n, rows = len(inputs), block_rows(n_columns)
    if n <= rows:
        return all_metrics(score(0, n), list(inputs), targets, k)
    totals: dict[str, float] = {}
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        part = all_metrics(score(start, stop), list(inputs[start:stop]), targets[start:stop], k)
        for key, value in part.items():
            totals[key] = totals.get(key, 0.0) + value * (stop - start)
    return {key: value / n for key, value in totals.items()}


@torch.no_grad()
def score_sequences(model: SequenceInterestModel, sequences: list[UserSequence],
                    device: torch.device, batch_size: int = 512,
                    at: np.ndarray | None = None) -> torch.Tensor:
    """Next-item scores for each user from their last ``max_len`` events: FloatTensor[U, N+1]
    on the CPU. Uses the model's ``last_hidden`` and ``item_logits`` (as serving does).

    at: float64 [U] request times (the held-out event's time: only its time, never its item),
    for a model whose time bias uses the request time; None: each history's last event."""
    was_training = model.training
    model.eval()
    items, times = last_window(sequences, model.config.max_len)
    request = None if at is None else torch.as_tensor(np.asarray(at, np.float64))
    chunks = []
    try:
        for start in range(0, len(sequences), batch_size):
            batch_items = items[start:start + batch_size].to(device)
            batch_times = times[start:start + batch_size].to(device)
            batch_at = None if request is None else request[start:start + batch_size].to(device)
            with autocast_context(device):
                hidden = model.last_hidden(batch_items, batch_times, batch_at)
                chunks.append(model.item_logits(hidden).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def evaluate_model(model: SequenceInterestModel, split: LeaveOneOutSplit, device: torch.device,
                   parts: tuple[str, ...] = ("val", "test"), k: int = 10) -> dict[str, Metrics]:
    """{"val": metrics, "test": metrics} for the sequence model (full ranking). Requests are
    made at the held-out event's time (what serving is told as the request time). Users are
    scored in blocks of ``EVAL_BLOCK_CELLS`` scores (a large catalogue)."""
    result: dict[str, Metrics] = {}
    columns = int(model.item_text.shape[0])
    for part, inputs, targets, at in (
            ("val", split.valid_inputs, split.valid_items, split.valid_times),
            ("test", split.test_inputs, split.test_items, split.test_times)):
        if part not in parts:
            continue
        sequences = inputs()

        def score(start: int, stop: int, sequences: list[UserSequence] = sequences,
                  at: np.ndarray = at) -> torch.Tensor:
            return score_sequences(model, sequences[start:stop], device, at=at[start:stop])

        result[part] = blocked_metrics(score, sequences, targets, columns, k)
    return result


def popularity_scores(split: LeaveOneOutSplit, n_items: int) -> torch.Tensor:
    """Interaction counts over the TRAINING parts only (validation/test targets excluded):
    FloatTensor[N+1], column 0 = -inf."""
    counts = np.bincount(np.concatenate([seq.items for seq in split.train]),
                         minlength=n_items + 1).astype(np.float32)
    scores = torch.from_numpy(counts)
    scores[0] = -math.inf
    return scores


def evaluate_popularity(split: LeaveOneOutSplit, n_items: int, k: int = 10) -> dict[str, Metrics]:
    """The most-popular baseline on the same split: {"val": ..., "test": ...}, users in blocks
    (the masked copy is users x items)."""
    scores = popularity_scores(split, n_items)

    def score(start: int, stop: int) -> torch.Tensor:
        return scores.unsqueeze(0).expand(stop - start, -1)

    return {part: blocked_metrics(score, inputs, targets, len(scores), k)
            for part, inputs, targets in (("val", split.valid_inputs(), split.valid_items),
                                          ("test", split.test_inputs(), split.test_items))}
