"""The ``embedding-shift`` drift detector: two-sample evidence on item vectors, read
by a small GRU.

Why: a detector built on the sequence model's surprise does well on users that model trained
on (it memorised them, so a splice stands out) and worse on users it never saw, which is every
new user in serving (docs/drift-protocol.md, "seen" and "unseen"). The evidence here does not
depend on any trained user: it compares the item text embeddings (which the bundle has for
every item, cold-start ones included) of a user's recent events with those of their earlier
ones, so the same numbers come out whether the user was in training or not.

Per event ``t`` (causal: events ``0..t`` only), on L2-normalised item text embeddings ``e``:

- ``shift_k_m``: cosine distance between the mean of the last ``k`` events and the mean of the
  ``m`` events before them, for each (k, m) in ``WINDOWS``;
- ``mmd_k_m``: the (biased) squared MMD between the same two windows under the kernel
  ``exp(-gamma * (1 - cos))`` (``gamma`` set by the median heuristic on the training cases);
  block sums of the kernel matrix come from a 2-D prefix sum, so every window costs O(1);
- ``novelty``: 1 - the largest cosine similarity of ``e_t`` to the previous ``NN_BACK`` events,
  and ``novelty_3_vs_30`` (mean novelty of the last 3 events minus that of the 30 before);
- ``coherence_past`` / ``coherence_recent``: the length of the mean embedding of the 30 events
  before the last 3 / of the last 6 (1 = one narrow taste, near 0 = scattered);
- ``shift_z``: ``shift_3_30`` as a z-score against the user's own earlier values of it, so a
  broad user's usual restlessness is not read as a change;
- ``log_position``.

The item vectors are the scorer's (``spaces``): its item table ("items", what its logits are dot
products with: learned from many users' co-occurrences, so item-level knowledge, not a memory
of one user's sequence) and/or its item text embeddings ("text"). In the protocol's unseen view
the scorer is a sequence model fitted without the evaluated users, so even the item vectors
owe nothing to them.

The head is :class:`app.ml.drift_head.DriftHead`'s architecture (linear, GRU, read-out, with
its own feature standardisation) over these features; its file is ``shift_head.pt`` and its
manifest config ``{"n_features", "hidden_size", "gammas", "spaces"}``. ``traces`` also returns
the scorer's surprise as evidence (the abrupt/gradual rule reads it); the probabilities never
use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from app.ml.drift_head import (
    FEATURE_NAMES,
    DriftHead,
    causal_window_mean,
    drift_features,
    event_surprise,
)
from app.ml.parts.protocols import DriftTrace, NextItemScorer
from app.ml.parts.registry import load_weights, register_part

WINDOWS = ((1, 30), (3, 30), (6, 30), (10, 40))  # (recent k, earlier m) event windows
MMD_WINDOWS = ((3, 30), (6, 30), (10, 40))
NN_BACK = 50  # events back that "novelty" looks for a similar film
SHIFT_FEATURES = (
    *(f"shift_{k}_{m}" for k, m in WINDOWS), *(f"mmd_{k}_{m}" for k, m in MMD_WINDOWS),
    "novelty", "novelty_3_vs_30", "coherence_past", "coherence_recent", "shift_z",
    "log_position",
)
N_SHIFT_FEATURES = len(SHIFT_FEATURES)
WEIGHTS_FILE = "shift_head.pt"
# With ``surprise=True`` the head also reads the scorer's drift features but the gap since the
# previous event: a head trained on splices without a pause learned that a long pause (a real
# session start) excuses a surprise, and missed every change that came after one.
SURPRISE_FEATURES = tuple(name for name in FEATURE_NAMES if name != "log_gap")
SURPRISE_COLUMNS = [FEATURE_NAMES.index(name) for name in SURPRISE_FEATURES]
DEFAULT_GAMMA = 2.0


def _cos_distance(a: torch.Tensor, b: torch.Tensor, ca: torch.Tensor,
                  cb: torch.Tensor) -> torch.Tensor:
    """1 - cosine of [B, L, D] window means; 0 where either window is empty."""
    distance = 1.0 - F.cosine_similarity(a, b, dim=-1, eps=1e-8)
    return distance * ((ca > 0) & (cb > 0))


def _block_sums(prefix: torch.Tensor, r0: torch.Tensor, r1: torch.Tensor, c0: torch.Tensor,
                c1: torch.Tensor) -> torch.Tensor:
    """Sums of K[b, r0..r1-1, c0..c1-1] (half-open, per t) from the 2-D prefix sum [B, L+1, L+1]."""
    return (prefix[:, r1, c1] - prefix[:, r0, c1] - prefix[:, r1, c0] + prefix[:, r0, c0])


def _mmd(prefix: torch.Tensor, k: int, m: int, length: int) -> torch.Tensor:
    """Biased squared MMD between events (t-k, t] and (t-k-m, t-k] for every t: [B, L]."""
    t = torch.arange(length, device=prefix.device)
    r1 = t + 1
    r0 = (r1 - k).clamp(min=0)
    p1 = r0
    p0 = (p1 - m).clamp(min=0)
    nr = (r1 - r0).to(prefix.dtype)
    npast = (p1 - p0).to(prefix.dtype)
    rr = _block_sums(prefix, r0, r1, r0, r1) / (nr * nr).clamp(min=1)
    pp = _block_sums(prefix, p0, p1, p0, p1) / (npast * npast).clamp(min=1)
    rp = _block_sums(prefix, r0, r1, p0, p1) / (nr * npast).clamp(min=1)
    return (rr + pp - 2 * rp).clamp(min=0) * (npast > 0)


@torch.no_grad()
def shift_features(item_idx: torch.Tensor, item_text: torch.Tensor,
                   gamma: float = DEFAULT_GAMMA) -> torch.Tensor:
    """Per-event evidence (``SHIFT_FEATURES``): FloatTensor[B, L, N_SHIFT_FEATURES].

    item_idx: LongTensor[B, L] right-padded with 0; item_text: FloatTensor[n_rows, D] (row 0
    zeros). Causal; values at padded positions are meaningless.
    """
    emb = F.normalize(F.embedding(item_idx, item_text.float()), dim=-1)
    batch, length, _ = emb.shape
    columns = []
    for k, m in WINDOWS:
        recent, cr = causal_window_mean(emb, k - 1, 0)
        before, cb = causal_window_mean(emb, k + m - 1, k)
        columns.append(_cos_distance(recent, before, cr, cb))
    cosine = emb @ emb.transpose(1, 2)  # [B, L, L]
    kernel = torch.exp(-gamma * (1.0 - cosine))
    prefix = F.pad(kernel.cumsum(1).cumsum(2), (1, 0, 1, 0))
    columns.extend(_mmd(prefix, k, m, length) for k, m in MMD_WINDOWS)
    t = torch.arange(length, device=item_idx.device)
    back = t.view(-1, 1) - t.view(1, -1)  # [L, L]: t - s
    earlier = (back >= 1) & (back <= NN_BACK)
    best = cosine.masked_fill(~earlier, -2.0).amax(dim=-1)
    novelty = torch.where(best > -2.0, 1.0 - best, torch.zeros_like(best))
    columns.append(novelty)
    n_recent, _ = causal_window_mean(novelty.unsqueeze(-1), 2, 0)
    n_past, cp = causal_window_mean(novelty.unsqueeze(-1), 32, 3)
    columns.append((n_recent - n_past).squeeze(-1) * (cp > 0))
    past, _ = causal_window_mean(emb, 32, 3)
    recent6, _ = causal_window_mean(emb, 5, 0)
    columns.extend([past.norm(dim=-1), recent6.norm(dim=-1)])
    shift = columns[1].unsqueeze(-1)  # shift_3_30
    mean, count = causal_window_mean(shift, 10_000, 3)
    square, _ = causal_window_mean(shift * shift, 10_000, 3)
    std = (square - mean * mean).clamp(min=0).sqrt() + 0.02
    columns.append(((shift - mean) / std).squeeze(-1) * (count > 2))
    columns.append(torch.log1p(t.float()).expand(batch, -1))
    return torch.stack(columns, dim=-1)


def median_gamma(item_idx: list[list[int]], item_text: torch.Tensor) -> float:
    """Median heuristic: 1 / the median cosine distance between events of the same history."""
    emb = F.normalize(item_text.float(), dim=-1)
    values = []
    for row in item_idx:
        x = emb[torch.as_tensor(row[:200])]
        d = 1.0 - x @ x.T
        values.append(d[torch.triu(torch.ones_like(d, dtype=torch.bool), diagonal=1)])
    median = float(torch.cat(values).median()) if values else 1.0 / DEFAULT_GAMMA
    return 1.0 / max(median, 1e-3)


SPACES = ("items", "text")  # the scorer's item table / its item text embeddings


def item_space(scorer: NextItemScorer, space: str) -> torch.Tensor:
    """FloatTensor[n_rows, D] of the item vectors a feature space reads from the scorer."""
    if space == "items":
        with torch.no_grad():
            return scorer.item_table().float()
    if space == "text":
        return scorer.item_text.float()
    raise ValueError(f"unknown item space {space!r}; expected one of {SPACES}")


@register_part("drift", "embedding-shift", part_format=1)
class EmbeddingShiftHead(DriftHead):
    """A GRU over :func:`shift_features` in one or more item spaces (see the module
    docstring): ``spaces[i]`` read with kernel width ``gammas[i]``."""

    def __init__(self, n_features: int = N_SHIFT_FEATURES, hidden_size: int = 32,
                 gammas: list[float] | None = None, spaces: list[str] | None = None,
                 surprise: bool = False) -> None:
        super().__init__(n_features, hidden_size)
        self.spaces = list(spaces or ["items"])
        self.gammas = [float(g) for g in (gammas or [DEFAULT_GAMMA] * len(self.spaces))]
        self.surprise = bool(surprise)

    def _parts(self, scorer: NextItemScorer, item_idx: torch.Tensor,
               timestamps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features FloatTensor[B, L, F], the scorer's surprise [B, L]), one forward pass."""
        parts = [shift_features(item_idx, item_space(scorer, space).to(item_idx.device), gamma)
                 for space, gamma in zip(self.spaces, self.gammas, strict=True)]
        if self.surprise:
            shared = drift_features(scorer, item_idx, timestamps)
            parts.append(shared[..., SURPRISE_COLUMNS])
            surprise = shared[..., FEATURE_NAMES.index("surprise")]
        else:
            surprise = event_surprise(scorer, item_idx, timestamps)
        return torch.cat(parts, dim=-1), surprise

    def features(self, scorer: NextItemScorer, item_idx: torch.Tensor,
                 timestamps: torch.Tensor) -> torch.Tensor:
        """FloatTensor[B, L, F]: :func:`shift_features` per space, then (``surprise``) the
        scorer's :data:`SURPRISE_FEATURES`."""
        return self._parts(scorer, item_idx, timestamps)[0]

    def traces(self, scorer: NextItemScorer, item_idx: torch.Tensor,
               timestamps: torch.Tensor) -> DriftTrace:
        """Per-event probabilities and the scorer's surprise (evidence)."""
        features, surprise = self._parts(scorer, item_idx, timestamps)
        return DriftTrace(self.probabilities(features).float(), surprise.float())

    def save_part(self, directory: Path) -> dict[str, Any]:
        torch.save(self.state_dict(), Path(directory) / WEIGHTS_FILE)
        return {"n_features": self.inp.in_features, "hidden_size": self.inp.out_features,
                "gammas": self.gammas, "spaces": self.spaces, "surprise": self.surprise}

    @classmethod
    def load_part(cls, directory: Path, config: dict[str, Any], part_format: int,
                  device: torch.device) -> EmbeddingShiftHead:
        head = cls(**config)
        head.load_state_dict(load_weights(Path(directory) / WEIGHTS_FILE))
        return head.to(device)
