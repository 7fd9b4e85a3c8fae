"""What a bundle needs of each of its three parts, as protocols.

A bundle is an item encoder, a next-item scorer and a drift detector. Each part is an object of
a registered *kind* (:mod:`app.ml.parts.registry`); the bundle talks to it only through the
methods below, so a part of another kind drops in without a change to the bundle, serving,
evaluation or the loader.

Tensors follow the model contract (docs/design/model-contract.md): item index 0 is padding,
catalogue items are 1..N, rows past N are cold-start items; histories are right-padded
``item_idx`` LongTensor[B, L] with epoch-second ``timestamps`` [B, L] (float64).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Protocol, Self, runtime_checkable

import torch


class DriftTrace(NamedTuple):
    """A drift detector's answer for a batch: both FloatTensor[B, L], causal (entry t depends
    on events 0..t only); values at padded positions are meaningless."""

    probabilities: torch.Tensor  # per event: P(the user's interest changed at this event)
    surprise: torch.Tensor  # evidence: -log p(item_t | events < t) under the scorer


@runtime_checkable
class Part(Protocol):
    """Every part: a torch-style object that saves itself into a bundle directory.

    Its kind's class also has ``load_part(directory, config, part_format, device)``, a
    classmethod returning the part (see :func:`app.ml.parts.registry.register_part`).
    """

    def save_part(self, directory: Path) -> dict[str, Any]:
        """Write this part's files into ``directory``; return its JSON config for the manifest
        (what ``load_part`` needs besides the files)."""
        ...

    def eval(self) -> Self: ...

    def to(self, device: torch.device) -> Self: ...


@runtime_checkable
class ItemEncoder(Part, Protocol):
    """Item texts -> unit-norm embeddings (the cold-start path and topic assignment)."""

    @property
    def dim(self) -> int: ...

    def embed(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """FloatTensor[n, dim] on the CPU, no gradients."""
        ...


@runtime_checkable
class NextItemScorer(Part, Protocol):
    """Histories -> hidden states -> scores over every item row."""

    n_items: int  # trained catalogue size N
    text_dim: int  # width of the item text embeddings it reads
    item_text: torch.Tensor  # FloatTensor[n_rows, text_dim] item text embeddings, row 0 zeros

    @property
    def max_len(self) -> int:
        """Longest history window it reads at once."""
        ...

    def __call__(self, item_idx: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        """Causal hidden states FloatTensor[B, L, H] (L <= max_len)."""
        ...

    def last_hidden(self, item_idx: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        """Hidden state at each history's last real event: FloatTensor[B, H]. A scorer whose
        scores depend on the request time also has ``uses_request_time = True`` and takes
        ``at`` ([B] epoch seconds) as a third argument; the bundle passes it only then."""
        ...

    def item_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] -> scores [..., n_rows] (column 0 = -inf)."""
        ...

    def item_table(self) -> torch.Tensor:
        """Item representations FloatTensor[n_rows, H] that logits are dot products with."""
        ...

    def set_item_text_embeddings(self, emb: torch.Tensor, copy: bool = True) -> None:
        """Replace the item text rows (rows past n_items + 1 are cold-start items)."""
        ...


@runtime_checkable
class DriftDetector(Part, Protocol):
    """Histories (read through the scorer) -> per-event drift probabilities and evidence."""

    def traces(self, scorer: NextItemScorer, item_idx: torch.Tensor,
               timestamps: torch.Tensor) -> DriftTrace:
        """Per-event probabilities and surprise of a batch of histories of any length."""
        ...
