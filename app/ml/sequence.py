"""SequenceInterestModel: a causal Transformer over a user's events (SASRec recipe + content).

The recipe follows RecBole's SASRec (2 post-LN blocks, GELU, dropout 0.5, N(0, 0.02) init,
right padding, full-softmax scores = hidden x item table). On top of the learned item-ID
embedding, an item's representation adds a projection of its text embedding (from the
fine-tuned MiniLM encoder; genres and year are in the text), and each event adds embeddings of
the log time gap to the previous event and of the hour of day. ``use_text`` / ``use_time``
switch the content features off: with both off this is the ``sasrec_id`` baseline.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from app.ml.parts.registry import BundleError, load_weights, register_part

SECONDS_PER_HOUR = 3600.0
WEIGHTS_FILE = "sequence_model.pt"


@dataclass
class SequenceModelConfig:
    """Architecture of the sequence model (JSON-serialisable through ``dataclasses.asdict``)."""

    hidden_size: int = 64  # width of every embedding and hidden state
    num_layers: int = 2  # Transformer blocks
    num_heads: int = 2  # attention heads per block
    ff_size: int = 256  # feed-forward inner width
    dropout: float = 0.5  # hidden dropout (embeddings, attention output, feed-forward)
    attn_dropout: float = 0.5  # dropout on attention probabilities
    max_len: int = 50  # longest input window (learned positions)
    layer_norm_eps: float = 1e-12
    init_std: float = 0.02  # N(0, init_std) for weights, biases zero
    use_text: bool = True  # add the projected item text embedding to the item table
    use_time: bool = True  # add log-gap and hour-of-day embeddings to each event
    gap_buckets: int = 16  # bucket 0 = first event; then buckets of log2(1 + gap seconds) / 2


def time_features(timestamps: torch.Tensor, gap_buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bucketised log gap to the previous event and hour of day (UTC).

    timestamps: [B, L] epoch seconds (pass float64 or int64: float32 only resolves ~1 minute
    at today's epoch values). Returns (gap_bucket [B, L] in 0..gap_buckets-1, where 0 means
    "no previous event", and hour [B, L] in 0..23), both int64.
    """
    times = timestamps.to(torch.float64)
    gaps = (times[:, 1:] - times[:, :-1]).clamp(min=0.0)
    # log2(1 + gap) / 2: 0 s -> 1, a minute -> 3, an hour -> 6, a day -> 9, a year -> 13.
    buckets = 1 + torch.floor(torch.log2(1.0 + gaps) / 2.0).long()
    buckets = buckets.clamp(max=gap_buckets - 1)
    # not zeros_like(buckets[:, :1]): with one event, buckets has no column to copy
    first = torch.zeros(times.shape[0], 1, dtype=torch.long, device=times.device)
    gap_bucket = torch.cat([first, buckets], dim=1)
    hour = torch.remainder(torch.floor(times / SECONDS_PER_HOUR), 24).long()
    return gap_bucket, hour


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position i attends to positions 0..i only."""

    def __init__(self, config: SequenceModelConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.attn_dropout = config.attn_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, L, H] -> [B, L, H]."""
        batch, length, hidden = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        dropout = self.attn_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(batch, length, hidden))


class TransformerBlock(nn.Module):
    """BERT-style post-LN block: LN(x + drop(attn(x))), then LN(h + drop(ff(h)))."""

    def __init__(self, config: SequenceModelConfig) -> None:
        super().__init__()
        self.attention = CausalSelfAttention(config)
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ff = nn.Sequential(nn.Linear(config.hidden_size, config.ff_size), nn.GELU(),
                                nn.Linear(config.ff_size, config.hidden_size))
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, L, H] -> [B, L, H]."""
        x = self.norm1(x + self.dropout(self.attention(x)))
        return self.norm2(x + self.dropout(self.ff(x)))


@register_part("scorer", "sasrec-text-time", part_format=1)
class SequenceInterestModel(nn.Module):
    """Causal Transformer over right-padded event sequences; scores the whole catalogue.

    Bundle part kind ``sasrec-text-time`` (format 1): the state dict in ``sequence_model.pt``
    (it holds the item text embeddings, cold-start rows included); manifest config
    ``{"sequence_config": asdict(config), "n_items": N, "text_dim": D}``.
    """

    def __init__(self, config: SequenceModelConfig, n_items: int, text_dim: int) -> None:
        super().__init__()
        self.config = config
        self.n_items = n_items
        self.text_dim = text_dim
        hidden = config.hidden_size
        self.item_embedding = nn.Embedding(n_items + 1, hidden)
        self.text_projection = nn.Linear(text_dim, hidden) if config.use_text else None
        self.position_embedding = nn.Embedding(config.max_len, hidden)
        self.gap_embedding = nn.Embedding(config.gap_buckets, hidden) if config.use_time else None
        self.hour_embedding = nn.Embedding(24, hidden) if config.use_time else None
        self.input_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.input_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_layers))
        # Row 0 (padding) stays zero; serving may append rows for cold-start items.
        self.register_buffer("item_text", torch.zeros(n_items + 1, text_dim))
        self.apply(self._init_weights)

    @property
    def max_len(self) -> int:
        return self.config.max_len

    def save_part(self, directory: Path) -> dict[str, Any]:
        torch.save(self.state_dict(), Path(directory) / WEIGHTS_FILE)
        return {"sequence_config": asdict(self.config), "n_items": self.n_items,
                "text_dim": self.text_dim}

    @classmethod
    def load_part(cls, directory: Path, config: dict[str, Any], part_format: int,
                  device: torch.device) -> SequenceInterestModel:
        state = load_weights(Path(directory) / WEIGHTS_FILE)
        if "item_text" not in state:
            raise BundleError(f"{WEIGHTS_FILE} holds no item_text table")
        model = cls(SequenceModelConfig(**config["sequence_config"]), config["n_items"],
                    config["text_dim"])
        model.set_item_text_embeddings(state["item_text"])  # may hold cold-start rows
        model.load_state_dict(state)
        return model.to(device)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def set_item_text_embeddings(self, emb: torch.Tensor) -> None:
        """emb: FloatTensor[n_rows, text_dim] with row 0 = zeros; n_rows >= n_items + 1 (rows
        past the trained vocabulary are cold-start items, scored by their text alone)."""
        if emb.dim() != 2 or emb.shape[1] != self.text_dim or emb.shape[0] < self.n_items + 1:
            raise ValueError(f"expected [>= {self.n_items + 1}, {self.text_dim}], got "
                             f"{tuple(emb.shape)}")
        self.item_text = emb.detach().to(self.item_text.device, torch.float32).clone()

    def item_table(self) -> torch.Tensor:
        """Representation of every item row (0 = padding): FloatTensor[n_rows, H].

        At inference (eval mode, no grad) the table is computed once and reused until a weight
        or the text embeddings change: a request calls this several times, and projecting every
        item's text each time was the costliest step of serving."""
        if self.training or torch.is_grad_enabled():
            return self._compute_item_table()
        tensors = [self.item_text, self.item_embedding.weight]
        if self.text_projection is not None:
            tensors += [self.text_projection.weight, self.text_projection.bias]
        # Changes whenever the table would: a tensor replaced (new object), updated in place
        # (its version counter: optimizer steps, load_state_dict) or autocast turned on/off.
        key = (*((id(t), t._version) for t in tensors),
               torch.is_autocast_enabled(self.item_text.device.type))
        cached = getattr(self, "_item_table_cache", None)
        if cached is None or cached[0] != key:
            # the tensors ride along so their ids cannot be reused while the key holds them
            cached = (key, self._compute_item_table(), tensors)
            self._item_table_cache = cached
        return cached[1]

    def _compute_item_table(self) -> torch.Tensor:
        table = self.item_embedding.weight
        n_rows = self.item_text.shape[0]
        if n_rows > table.shape[0]:  # cold-start items have no learned ID embedding
            extra = table.new_zeros(n_rows - table.shape[0], table.shape[1])
            table = torch.cat([table, extra])
        if self.text_projection is not None:
            table = table + self.text_projection(self.item_text)
        return table

    def embed_events(self, item_idx: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        """Input embeddings before the blocks: item_idx, timestamps [B, L] -> [B, L, H]."""
        length = item_idx.shape[1]
        if length > self.config.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.config.max_len}")
        x = F.embedding(item_idx, self.item_table())
        x = x + self.position_embedding.weight[:length].unsqueeze(0)
        if self.gap_embedding is not None and self.hour_embedding is not None:
            gap_bucket, hour = time_features(timestamps, self.config.gap_buckets)
            x = x + self.gap_embedding(gap_bucket) + self.hour_embedding(hour)
        return self.input_dropout(self.input_norm(x))

    def forward(self, item_idx: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        """item_idx: LongTensor[B, L] right-padded with 0; timestamps: [B, L] epoch seconds.

        Returns hidden states FloatTensor[B, L, H]; position i depends on events 0..i only
        (outputs at padded positions are meaningless and must be ignored).
        """
        x = self.embed_events(item_idx, timestamps)
        for block in self.blocks:
            x = block(x)
        return x

    def item_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [..., H] -> scores FloatTensor[..., n_rows] over every item (column 0 = -inf)."""
        logits = hidden @ self.item_table().t().to(hidden.dtype)
        logits[..., 0] = -math.inf
        return logits

    def last_hidden(self, item_idx: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        """Interest state at each sequence's last real event: [B, L] inputs -> [B, H]."""
        lengths = (item_idx > 0).sum(dim=1)
        if bool((lengths == 0).any()):
            raise ValueError("every sequence needs at least one event")
        hidden = self(item_idx, timestamps)
        rows = torch.arange(item_idx.shape[0], device=item_idx.device)
        return hidden[rows, lengths - 1]
