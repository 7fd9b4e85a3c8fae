"""Per-event interest-drift features from the frozen sequence model, and the drift head.

The head is the bundle's drift part of kind ``feature-gru`` (format 1): its state dict in
``drift_head.pt`` (its feature standardisation included); manifest config
``{"n_features": F, "hidden_size": H}``. The features work with any next-item scorer
(:class:`app.ml.parts.NextItemScorer`), so other detector kinds can reuse them
(:func:`drift_features`, :func:`event_surprise`).

Everything here is causal: the features and the head's score at event ``t`` use events
``0..t`` only, so the service can score a user online and get the numbers evaluation saw.

Sequences longer than the sequence model's ``max_len`` are read through overlapping windows
(stride ``max_len // 2``): event ``t`` takes its hidden state from the window that starts
at the latest stride multiple leaving it at least ``max_len // 2`` events of history.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from app.ml.parts.protocols import DriftTrace, NextItemScorer
from app.ml.parts.registry import load_weights, register_part

SHORT = 3  # events in the "recent" window
LONG = 30  # events in the "before" window that the recent one is compared with
FEATURE_NAMES = (
    "surprise", "surprise_vs_past", "recent_surprise_vs_past", "log_rank",
    "text_shift", "text_shift_6", "item_shift", "item_vs_past_text", "hidden_change",
    "log_position", "log_gap",
)
N_FEATURES = len(FEATURE_NAMES)
SURPRISE = FEATURE_NAMES.index("surprise")
WEIGHTS_FILE = "drift_head.pt"


def windowed_hidden(model: NextItemScorer, item_idx: torch.Tensor,
                    timestamps: torch.Tensor) -> torch.Tensor:
    """Causal hidden states for sequences of any length: [B, L] -> FloatTensor[B, L, H]."""
    width = model.max_len
    length = item_idx.shape[1]
    if length <= width:
        return model(item_idx, timestamps)
    stride = width // 2
    starts = list(range(0, length - stride, stride))
    hidden = None
    for k, start in enumerate(starts):
        chunk = model(item_idx[:, start:start + width], timestamps[:, start:start + width])
        if hidden is None:
            hidden = chunk.new_zeros(item_idx.shape[0], length, chunk.shape[-1])
        # Window k provides events [start + stride, start + width) (all of it for k = 0).
        first = 0 if k == 0 else stride
        hidden[:, start + first:start + chunk.shape[1]] = chunk[:, first:]
    assert hidden is not None
    return hidden


def causal_window_mean(x: torch.Tensor, back: int, skip: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``x[:, t - back .. t - skip]`` (inclusive, clipped at 0) for every t.

    x: [B, L, D]. Returns (mean [B, L, D], count [B, L]); empty windows give zeros.
    """
    length = x.shape[1]
    cum = torch.cat([x.new_zeros(x.shape[0], 1, x.shape[2]), x.cumsum(dim=1)], dim=1)
    t = torch.arange(length, device=x.device)
    start = (t - back).clamp(min=0)
    stop = (t - skip + 1).clamp(min=0)
    count = (stop - start).clamp(min=0).to(x.dtype)
    total = cum[:, stop] - cum[:, torch.minimum(start, stop)]
    return total / count.clamp(min=1.0).view(1, -1, 1), count.expand(x.shape[0], -1)


def _cos_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity over the last dim; 0 where either side is all zeros."""
    distance = 1.0 - F.cosine_similarity(a, b, dim=-1, eps=1e-8)
    empty = (a.abs().sum(-1) == 0) | (b.abs().sum(-1) == 0)
    return distance.masked_fill(empty, 0.0)


# How `next_item_surprise` scores states over the catalogue. Up to SURPRISE_WHOLE_MAX_ROWS
# item rows, every state of a batch against every item in one matrix, as training computed it
# (ml-100k and ML-1M always take this path, whatever the batch). Above it (200 states over a
# million items would be 800 MB per user) blocks of SURPRISE_SLICE states against slices of
# items, fixed sizes so a state's answer does not depend on what shares its batch.
SURPRISE_WHOLE_MAX_ROWS = 1 << 17
SURPRISE_SLICE = (512, 65_536)  # (states, items) per product: 128 MiB of float32 logits


def next_item_surprise(model: NextItemScorer, hidden: torch.Tensor, targets: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """How unexpected each target item was: (-log p(target | state), log(1 + rank) / log(N)),
    each shaped like `targets`, for hidden states [..., H] (the state before each target)
    scored over the whole catalogue; rank = items the scorer put above the target."""
    n_rows = model.item_text.shape[0] - 1
    flat = hidden.reshape(-1, hidden.shape[-1]).float()
    target = targets.reshape(-1)
    if n_rows + 1 <= SURPRISE_WHOLE_MAX_ROWS:
        logits = model.item_logits(flat).log_softmax(dim=-1)  # [P, N+1]
        logp = logits.gather(-1, target.unsqueeze(-1))
        rank = (logits > logp).sum(-1).float()
        surprise = -logp.squeeze(-1)
    else:
        table = model.item_table().float()
        states = SURPRISE_SLICE[0]
        parts = [_sliced_surprise(table, flat[start:start + states],
                                  target[start:start + states])
                 for start in range(0, flat.shape[0], states)]
        surprise = torch.cat([p[0] for p in parts])
        rank = torch.cat([p[1] for p in parts])
    log_rank = torch.log1p(rank) / math.log(n_rows)
    return surprise.reshape(targets.shape), log_rank.reshape(targets.shape)


def _sliced_surprise(table: torch.Tensor, flat: torch.Tensor, target: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """`next_item_surprise` of a block of states, a slice of the item table at a time: the
    softmax's normaliser as a log-sum-exp of each slice's, and a running count of items
    scored above the target (whose own score is the row product; the slice's entry for it is
    not counted)."""
    width = SURPRISE_SLICE[1]
    target_score = (flat * table[target]).sum(-1)  # [P]
    log_normaliser = torch.full_like(target_score, -math.inf)
    above = torch.zeros_like(target_score)
    for start in range(0, table.shape[0], width):
        scores = flat @ table[start:start + width].t()  # [P, width]
        if start == 0:
            scores[:, 0] = -math.inf  # the padding row is no item
        log_normaliser = torch.logaddexp(log_normaliser, torch.logsumexp(scores, dim=-1))
        above += (scores > target_score.unsqueeze(-1)).sum(-1).float()
        inside = (target >= start) & (target < start + scores.shape[1])
        if bool(inside.any()):
            own = scores.gather(-1, (target - start).clamp(0, scores.shape[1] - 1).unsqueeze(-1))
            above -= (inside & (own.squeeze(-1) > target_score)).float()
    return log_normaliser - target_score, above


def _surprise_and_rank(model: NextItemScorer, hidden: torch.Tensor,
                       item_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-log p(item_t | events < t) and log(1 + rank) / log(N): each [B, L]; t = 0 is uniform."""
    n_rows = model.item_text.shape[0] - 1
    surprise, log_rank = next_item_surprise(model, hidden[:, :-1], item_idx[:, 1:])
    uniform = torch.full_like(item_idx[:, :1], math.log(n_rows), dtype=torch.float32)
    return (torch.cat([uniform, surprise], dim=1),
            torch.cat([torch.ones_like(uniform), log_rank], dim=1))


@torch.no_grad()
def drift_features(model: NextItemScorer, item_idx: torch.Tensor, timestamps: torch.Tensor,
                   item_embeddings: torch.Tensor | None = None) -> torch.Tensor:
    """Per-event drift features (see ``FEATURE_NAMES``): FloatTensor[B, L, N_FEATURES].

    item_idx: LongTensor[B, L] right-padded with 0; timestamps: [B, L] epoch seconds;
    item_embeddings: FloatTensor[N+1, D] item text embeddings (default: the model's own).
    Values at padded positions are meaningless. The model is put in eval mode.
    """
    return drift_features_and_hidden(model, item_idx, timestamps, item_embeddings)[0]


@torch.no_grad()
def drift_features_and_hidden(model: NextItemScorer, item_idx: torch.Tensor,
                              timestamps: torch.Tensor,
                              item_embeddings: torch.Tensor | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`drift_features` and the scorer's causal hidden states it read ([B, L, H]): what
    the incremental state (app.ml.incremental) carries forward from a replay."""
    model.eval()
    text = model.item_text if item_embeddings is None else item_embeddings.to(item_idx.device)
    hidden = windowed_hidden(model, item_idx, timestamps).float()
    surprise, log_rank = _surprise_and_rank(model, hidden, item_idx)
    past_s, _ = causal_window_mean(surprise.unsqueeze(-1), LONG + SHORT, SHORT)
    recent_s, _ = causal_window_mean(surprise.unsqueeze(-1), SHORT - 1, 0)
    past_all, count = causal_window_mean(surprise.unsqueeze(-1), 10_000, 1)
    emb = F.embedding(item_idx, text.float())
    items = F.embedding(item_idx, model.item_table().float())
    shift = []
    for space, short in ((emb, SHORT), (emb, 2 * SHORT), (items, SHORT)):
        recent, _ = causal_window_mean(space, short - 1, 0)
        before, _ = causal_window_mean(space, LONG + short - 1, short)
        shift.append(_cos_distance(recent, before))
    before_t, _ = causal_window_mean(emb, LONG, 1)
    # hidden state SHORT events back (the first one for the first SHORT events); indexing
    # rather than cat-with-a-shift keeps the length right for histories under SHORT events
    back_index = (torch.arange(item_idx.shape[1], device=item_idx.device) - SHORT).clamp(min=0)
    back = hidden[:, back_index]
    gaps = torch.diff(timestamps.double(), dim=1, prepend=timestamps[:, :1].double())
    position = torch.arange(item_idx.shape[1], device=item_idx.device, dtype=torch.float32)
    columns = {
        "surprise": surprise,
        "surprise_vs_past": surprise - past_all.squeeze(-1) * (count > 0),
        "recent_surprise_vs_past": (recent_s - past_s).squeeze(-1),
        "log_rank": log_rank,
        "text_shift": shift[0], "text_shift_6": shift[1], "item_shift": shift[2],
        "item_vs_past_text": _cos_distance(emb, before_t),
        "hidden_change": _cos_distance(hidden, back),
        "log_position": torch.log1p(position).expand_as(surprise),
        "log_gap": torch.log1p(gaps.clamp(min=0)).float(),
    }
    return feature_matrix(columns), hidden


def feature_matrix(columns: dict[str, torch.Tensor]) -> torch.Tensor:
    """Named feature columns stacked in FEATURE_NAMES order on the last axis: the one place
    the order is set, for the batch features here and the per-event row of
    app.ml.incremental alike."""
    missing = set(FEATURE_NAMES) ^ set(columns)
    if missing:
        raise ValueError(f"drift features {sorted(missing)} missing or unknown")
    return torch.stack([torch.as_tensor(columns[name], dtype=torch.float32)
                        for name in FEATURE_NAMES], dim=-1)


@torch.no_grad()
def event_surprise(model: NextItemScorer, item_idx: torch.Tensor,
                   timestamps: torch.Tensor) -> torch.Tensor:
    """-log p(item_t | events < t) under the scorer: FloatTensor[B, L] (t = 0: uniform)."""
    model.eval()
    hidden = windowed_hidden(model, item_idx, timestamps).float()
    return _surprise_and_rank(model, hidden, item_idx)[0]


@register_part("drift", "feature-gru", part_format=1)
class DriftHead(nn.Module):
    """Causal scorer of per-event features: a linear layer, a 1-layer GRU and a linear read-out.

    ``feature_mean`` / ``feature_std`` (set by training) standardise the input, so the head
    carries its own normalisation into the bundle.
    """

    def __init__(self, n_features: int = N_FEATURES, hidden_size: int = 32) -> None:
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        self.inp = nn.Linear(n_features, hidden_size)
        self.gru = nn.GRU(hidden_size, hidden_size, batch_first=True)
        self.out = nn.Linear(2 * hidden_size, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: [B, L, F] -> logits [B, L] ("interest changed at this event")."""
        return self.run(features)[0]

    def run(self, features: torch.Tensor, state: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """features: [B, L, F], the GRU state before them ([B, H]; None: zeros) -> (logits
        [B, L], the GRU state after each event [B, L, H]). One event at a time with the state
        carried gives what one pass over the whole sequence gives."""
        x = (features - self.feature_mean) / self.feature_std
        x = torch.relu(self.inp(x))
        states, _ = self.gru(x, None if state is None else state.unsqueeze(0).contiguous())
        return self.out(torch.cat([states, x], dim=-1)).squeeze(-1), states

    @torch.no_grad()
    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """features: [B, L, F] -> per-event drift probabilities [B, L] (eval mode)."""
        self.eval()
        return torch.sigmoid(self(features))

    def traces(self, scorer: NextItemScorer, item_idx: torch.Tensor,
               timestamps: torch.Tensor) -> DriftTrace:
        """Per-event drift probabilities and surprise of a batch, in fp32 (as calibrated)."""
        features = drift_features(scorer, item_idx, timestamps).float()
        return DriftTrace(self.probabilities(features).float(), features[..., SURPRISE])

    def save_part(self, directory: Path) -> dict[str, Any]:
        torch.save(self.state_dict(), Path(directory) / WEIGHTS_FILE)
        return {"n_features": self.inp.in_features, "hidden_size": self.inp.out_features}

    @classmethod
    def load_part(cls, directory: Path, config: dict[str, Any], part_format: int,
                  device: torch.device) -> DriftHead:
        head = cls(**config)
        head.load_state_dict(load_weights(Path(directory) / WEIGHTS_FILE))
        return head.to(device)
