"""SequenceInterestModel: a causal Transformer over a user's events (SASRec recipe + content).

The recipe follows RecBole's SASRec (2 post-LN blocks, GELU, dropout 0.5, N(0, 0.02) init,
right padding, full-softmax scores = hidden x item table). On top of the learned item-ID
embedding, an item's representation adds a projection of its text embedding (from the
fine-tuned MiniLM encoder; genres and year are in the text), and each event adds embeddings of
the log time gap to the previous event and of the hour of day. ``use_text`` / ``use_time``
switch the content features off: with both off this is the ``sasrec_id`` baseline.

Optionally (``time_bias`` / ``position_bias``, off by default), every attention logit gets an
HSTU-style relative bias learned per layer and head: one value per bucket of the log time gap
between the query's time and the key event's time, and one per relative position i - j. With
``time_bias="event"`` a query's time is its own event's; with ``"request"`` (HSTU, RecTools'
``relative_time_attention``) the query at position i takes the time of the event after it,
which is the target's time in training and the request time at inference (``last_hidden``'s
``at``). Only that time is used, never the target's identity.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from app.ml.parts.registry import BundleError, load_weights, register_part

SECONDS_PER_HOUR = 3600.0
WEIGHTS_FILE = "sequence_model.pt"
TIME_BIAS_MODES = ("off", "event", "request")
BIAS_LOG_STEP = 0.301  # HSTU / RecTools: bucket = floor(ln(gap seconds) / 0.301)


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
    # Relative attention bias (all off by default: bundles without these keys load as before).
    time_bias: str = "off"  # "off", "event" (query at its own time), "request" (query at the
    # next event's time: the target's in training, the request time at inference)
    position_bias: bool = False  # a learned bias per relative position i - j
    bias_buckets: int = 64  # time-gap buckets 0..bias_buckets: floor(ln(gap s) / 0.301)

    def __post_init__(self) -> None:
        if self.time_bias not in TIME_BIAS_MODES:
            raise ValueError(f"time_bias must be one of {TIME_BIAS_MODES}, got "
                             f"{self.time_bias!r}")
        if self.bias_buckets < 1:
            raise ValueError("bias_buckets must be at least 1")

    @property
    def attention_bias(self) -> bool:
        """Whether attention logits carry a relative bias."""
        return self.time_bias != "off" or self.position_bias


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


def gap_boundaries(n_buckets: int, device: torch.device | None = None) -> torch.Tensor:
    """Lower edges (seconds, float64) of time-gap buckets 1..n_buckets: exp(0.301 k). Bucket
    b holds gaps in [edge b, edge b+1); bucket 0 gaps under 1.35 s, the last one the rest."""
    steps = torch.arange(1, n_buckets + 1, dtype=torch.float64, device=device)
    return torch.exp(BIAS_LOG_STEP * steps)


def gap_bucket_matrix(query_times: torch.Tensor, key_times: torch.Tensor, n_buckets: int,
                      causal: bool = False) -> torch.Tensor:
    """Bucket of each query-key time gap: [B, L] and [B, L] epoch seconds -> int64 [B, L, L]
    (entry i, j: the gap from key j's time to query i's; negative gaps count as 0). With
    ``causal``, keys after their query (j > i) get the extra bucket ``n_buckets + 1``."""
    gaps = (query_times.to(torch.float64).unsqueeze(2)
            - key_times.to(torch.float64).unsqueeze(1)).clamp(min=0.0)
    buckets = torch.bucketize(gaps, gap_boundaries(n_buckets, gaps.device), right=True)
    if causal:
        length = buckets.shape[-1]
        future = torch.ones(length, length, dtype=torch.bool, device=buckets.device).triu(1)
        buckets.masked_fill_(future, n_buckets + 1)
    return buckets


def next_event_times(timestamps: torch.Tensor, lengths: torch.Tensor, at: torch.Tensor
                     ) -> torch.Tensor:
    """Query times of the "request" time bias at inference: position i takes event i + 1's
    time and each history's last real event takes its request time ``at``.

    timestamps: [B, L] right-padded; lengths: int64 [B] (>= 1); at: [B] epoch seconds ->
    float64 [B, L] (padded positions hold 0)."""
    times = timestamps.to(torch.float64)
    shifted = torch.cat([times[:, 1:], torch.zeros_like(times[:, :1])], dim=1)
    rows = torch.arange(times.shape[0], device=times.device)
    shifted[rows, lengths - 1] = at.to(device=times.device, dtype=torch.float64)
    positions = torch.arange(times.shape[1], device=times.device).unsqueeze(0)
    return shifted.masked_fill(positions >= lengths.unsqueeze(1), 0.0)


def request_bucket_interval(key_times: np.ndarray, at: float, n_buckets: int,
                            margin: float = 1e-3) -> tuple[float, float]:
    """The request times [start, end) that put every gap to ``key_times`` (float64 [n], the
    events a ranking read, n >= 1) in the bucket it has at ``at``: where a ranking of the
    "request" time bias stays the same. A time before the last event counts as that event's
    (as ``last_hidden`` is called by the bundle), so then start is -inf. ``margin`` seconds
    are taken off both ends (float rounding of ``t + edge`` near a boundary)."""
    times = np.asarray(key_times, np.float64)
    last = float(times.max())
    effective = max(float(at), last)
    edges = np.concatenate([[-np.inf, 0.0], gap_boundaries(n_buckets).numpy(), [np.inf]])
    # edges[b + 1] is bucket b's lower edge (bucket 0 from gap 0); bucketize as the model does
    buckets = np.searchsorted(edges[2:-1], effective - times, side="right")
    start = float(np.max(times + edges[buckets + 1])) + margin
    end = float(np.min(times + edges[buckets + 2])) - margin
    if effective == last:
        start = -math.inf  # every earlier request time counts as the last event's
    return (start, end)


class _BucketBias(torch.autograd.Function):
    """``table[index]`` laid out as [B, heads, L, L], with a backward that sums the gradient
    per bucket by ``bincount``: the generic embedding backward sorts its indices, 2.5 million
    per layer for a batch of 64 windows of 200, and took most of a training step's time."""

    @staticmethod
    def forward(ctx: Any, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.rows = table.shape[0]
        return table.t()[:, index].transpose(0, 1)  # [K, H] by [B, L, L] -> [B, H, L, L]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (index,) = ctx.saved_tensors
        flat = index.reshape(-1)
        per_head = grad.transpose(0, 1).reshape(grad.shape[1], -1).float()
        sums = [torch.bincount(flat, weights=row, minlength=ctx.rows) for row in per_head]
        return torch.stack(sums, dim=1).to(grad.dtype), None


class RelativeAttentionBias(nn.Module):
    """One layer's learned biases: per head, one per time-gap bucket and/or per relative
    position; ``forward`` turns them into the attention mask (-inf above the diagonal)."""

    def __init__(self, config: SequenceModelConfig) -> None:
        super().__init__()
        heads = config.num_heads
        self.time = (nn.Embedding(config.bias_buckets + 1, heads)
                     if config.time_bias != "off" else None)
        self.position = nn.Embedding(config.max_len, heads) if config.position_bias else None

    def forward(self, buckets: torch.Tensor | None, length: int, device: torch.device
                ) -> torch.Tensor:
        """buckets: int64 [B, L, L] time-gap buckets with keys after their query in the extra
        last bucket (``gap_bucket_matrix(..., causal=True)``; None without the time bias) ->
        float mask [B or 1, heads, L, L]: the bias, and -inf where a key follows its query."""
        steps = torch.arange(length, device=device)
        offset = steps.unsqueeze(1) - steps.unsqueeze(0)  # i - j
        position = (None if self.position is None else
                    self.position(offset.clamp(min=0)).permute(2, 0, 1).unsqueeze(0))
        if self.time is None or buckets is None:
            if position is None:
                raise ValueError("no bias table")
            return position.masked_fill(offset < 0, -math.inf)
        # the extra row, -inf, is the causal mask: no separate masking pass over [B, H, L, L]
        mask = _BucketBias.apply(self._time_table(), buckets)
        return mask if position is None else mask + position

    def _time_table(self) -> torch.Tensor:
        """[bias_buckets + 2, heads]: the learned rows and a last row of -inf (future keys)."""
        assert self.time is not None
        weight = self.time.weight
        return torch.cat([weight, weight.new_full((1, weight.shape[1]), -math.inf)])

    def row(self, buckets: torch.Tensor | None, query: torch.Tensor, length: int
            ) -> torch.Tensor:
        """The mask of one query per sequence (inference): buckets int64 [B, L] of that row
        (None without the time bias), query int64 [B] its positions -> [B, heads, 1, L]."""
        offset = query.unsqueeze(1) - torch.arange(length, device=query.device).unsqueeze(0)
        mask = torch.zeros(0)
        if self.time is not None and buckets is not None:
            mask = F.embedding(buckets, self._time_table())  # [B, L, heads]
        if self.position is not None:
            position = self.position(offset.clamp(min=0))
            mask = position if mask.numel() == 0 else mask + position
        mask = mask.masked_fill((offset < 0).unsqueeze(-1), -math.inf)
        return mask.permute(0, 2, 1).unsqueeze(2)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position i attends to positions 0..i only."""

    def __init__(self, config: SequenceModelConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.attn_dropout = config.attn_dropout
        self.bias = RelativeAttentionBias(config) if config.attention_bias else None

    def forward(self, x: torch.Tensor, buckets: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, L, H] -> [B, L, H]; buckets: time-gap buckets [B, L, L] (time bias only)."""
        batch, length, hidden = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        dropout = self.attn_dropout if self.training else 0.0
        if self.bias is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            mask = self.bias(buckets, length, x.device).to(q.dtype)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.out(y.transpose(1, 2).reshape(batch, length, hidden))

    def forward_last(self, x: torch.Tensor, buckets: torch.Tensor | None,
                     query: torch.Tensor) -> torch.Tensor:
        """The output at one position per sequence only (inference with a bias): x [B, L, H],
        query int64 [B] -> [B, H]; equals ``forward(x, buckets)[rows, query]`` to float
        rounding, at a fraction of its cost (one query row instead of L)."""
        if self.bias is None:
            raise ValueError("forward_last is the attention-bias path")
        batch, length, hidden = x.shape
        rows = torch.arange(batch, device=x.device)
        weight, bias = self.qkv.weight, self.qkv.bias
        q = F.linear(x[rows, query], weight[:hidden], bias[:hidden])
        q = q.view(batch, self.num_heads, 1, -1)
        k, v = F.linear(x, weight[hidden:], bias[hidden:]).view(
            batch, length, 2, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        row = None if buckets is None else buckets[rows, query]
        mask = self.bias.row(row, query, length).to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.reshape(batch, hidden))


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

    def forward(self, x: torch.Tensor, buckets: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, L, H] -> [B, L, H]."""
        x = self.norm1(x + self.dropout(self.attention(x, buckets)))
        return self.norm2(x + self.dropout(self.ff(x)))

    def forward_last(self, x: torch.Tensor, buckets: torch.Tensor | None,
                     query: torch.Tensor) -> torch.Tensor:
        """``forward`` at one position per sequence (query int64 [B]) -> [B, H]."""
        rows = torch.arange(x.shape[0], device=x.device)
        h = self.norm1(x[rows, query] + self.dropout(self.attention.forward_last(x, buckets,
                                                                                 query)))
        return self.norm2(h + self.dropout(self.ff(h)))


@register_part("scorer", "sasrec-text-time", part_format=1)
class SequenceInterestModel(nn.Module):
    """Causal Transformer over right-padded event sequences; scores the whole catalogue.

    Bundle part kind ``sasrec-text-time`` (format 1): the state dict in ``sequence_model.pt``
    (it holds the item text embeddings, cold-start rows included); manifest config
    ``{"sequence_config": asdict(config), "n_items": N, "text_dim": D}``.
    """

    def __init__(self, config: SequenceModelConfig, n_items: int, text_dim: int,
                 item_text: torch.Tensor | None = None) -> None:
        """``item_text``: the text table to share (``set_item_text_embeddings(copy=False)``);
        None: a zero table until one is set. Sharing it from the start spares a zero table of
        the catalogue's size (1.5 GB at a million items) that would be replaced at once."""
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
        self.register_buffer("item_text", torch.zeros(0 if item_text is not None
                                                      else n_items + 1, text_dim))
        self.apply(self._init_weights)
        if item_text is not None:
            self.set_item_text_embeddings(item_text, copy=False)

    @property
    def max_len(self) -> int:
        return self.config.max_len

    @property
    def uses_request_time(self) -> bool:
        """Whether scores depend on the request time (``last_hidden``'s ``at``)."""
        return self.config.time_bias == "request"

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

    def set_item_text_embeddings(self, emb: torch.Tensor, copy: bool = True) -> None:
        """emb: FloatTensor[n_rows, text_dim] with row 0 = zeros; n_rows >= n_items + 1 (rows
        past the trained vocabulary are cold-start items, scored by their text alone).
        `copy=False`: keep `emb` itself when it is float32 on the model's device (the caller
        hands over a fresh table and does not change it afterwards)."""
        if emb.dim() != 2 or emb.shape[1] != self.text_dim or emb.shape[0] < self.n_items + 1:
            raise ValueError(f"expected [>= {self.n_items + 1}, {self.text_dim}], got "
                             f"{tuple(emb.shape)}")
        table = emb.detach().to(self.item_text.device, torch.float32)
        self.item_text = table.clone() if copy and table is emb else table

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

    def item_rows(self, index: torch.Tensor) -> torch.Tensor:
        """The representations of the item rows ``index`` (any shape) -> [..., H]: the rows of
        ``item_table``. A training step that needs fewer rows than the catalogue holds (a
        batch's inputs, sampled negatives) projects only those rows' text, so a step's cost
        follows the batch rather than the catalogue; otherwise the full table is gathered (at
        inference the cached one)."""
        if not (self.training or torch.is_grad_enabled()) or index.numel() >= len(self.item_text):
            return F.embedding(index, self.item_table())
        learned = self.item_embedding.weight
        known = index < learned.shape[0]  # cold-start rows have no learned ID embedding
        rows = F.embedding(torch.where(known, index, 0), learned) * known.unsqueeze(-1)
        if self.text_projection is not None:
            rows = rows + self.text_projection(F.embedding(index, self.item_text))
        return rows

    def embed_events(self, item_idx: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        """Input embeddings before the blocks: item_idx, timestamps [B, L] -> [B, L, H]."""
        length = item_idx.shape[1]
        if length > self.config.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.config.max_len}")
        x = self.item_rows(item_idx)
        x = x + self.position_embedding.weight[:length].unsqueeze(0)
        if self.gap_embedding is not None and self.hour_embedding is not None:
            gap_bucket, hour = time_features(timestamps, self.config.gap_buckets)
            x = x + self.gap_embedding(gap_bucket) + self.hour_embedding(hour)
        return self.input_dropout(self.input_norm(x))

    def forward(self, item_idx: torch.Tensor, timestamps: torch.Tensor,
                query_times: torch.Tensor | None = None) -> torch.Tensor:
        """item_idx: LongTensor[B, L] right-padded with 0; timestamps: [B, L] epoch seconds.

        Returns hidden states FloatTensor[B, L, H]; position i depends on events 0..i only
        (outputs at padded positions are meaningless and must be ignored).
        query_times: [B, L] each position's query time for ``time_bias="request"`` (training:
        the target's time); None, and always for ``"event"``: each event's own time.
        """
        x = self.embed_events(item_idx, timestamps)
        buckets = self._buckets(timestamps, query_times)
        for block in self.blocks:
            x = block(x, buckets)
        return x

    def _buckets(self, timestamps: torch.Tensor, query_times: torch.Tensor | None
                 ) -> torch.Tensor | None:
        """The time bias's gap buckets [B, L, L] (future keys in the extra bucket), or None."""
        if self.config.time_bias == "off":
            return None
        queries = (timestamps if query_times is None or not self.uses_request_time
                   else query_times)
        return gap_bucket_matrix(queries, timestamps, self.config.bias_buckets, causal=True)

    def item_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [..., H] -> scores FloatTensor[..., n_rows] over every item (column 0 = -inf)."""
        logits = hidden @ self.item_table().t().to(hidden.dtype)
        logits[..., 0] = -math.inf
        return logits

    def last_hidden(self, item_idx: torch.Tensor, timestamps: torch.Tensor,
                    at: torch.Tensor | None = None) -> torch.Tensor:
        """Interest state at each sequence's last real event: [B, L] inputs -> [B, H].

        at: [B] request times (epoch seconds) for ``time_bias="request"``; None: each
        history's last event time, which is also what a time before it counts as. Ignored by
        models that do not use the request time."""
        lengths = (item_idx > 0).sum(dim=1)
        if bool((lengths == 0).any()):
            raise ValueError("every sequence needs at least one event")
        query_times = None
        if self.uses_request_time:
            rows = torch.arange(item_idx.shape[0], device=item_idx.device)
            last = timestamps.to(torch.float64)[rows, lengths - 1]
            at = last if at is None else torch.maximum(
                at.to(device=last.device, dtype=torch.float64), last)
            query_times = next_event_times(timestamps, lengths, at)
        if self.config.attention_bias and not self.training:
            # inference: the last block only at the last position (its other rows are unused)
            x = self.embed_events(item_idx, timestamps)
            buckets = self._buckets(timestamps, query_times)
            for block in self.blocks[:-1]:
                x = block(x, buckets)
            return self.blocks[-1].forward_last(x, buckets, lengths - 1)
        hidden = self(item_idx, timestamps, query_times)
        rows = torch.arange(item_idx.shape[0], device=item_idx.device)
        return hidden[rows, lengths - 1]
