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

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol, Self, runtime_checkable

import numpy as np
import torch


class DriftTrace(NamedTuple):
    """A drift detector's answer for a batch: [B, L] each, causal (entry t depends on events
    0..t only); values at padded positions are meaningless."""

    probabilities: torch.Tensor  # per event: P(the user's interest changed at this event)
    surprise: torch.Tensor  # evidence: -log p(item_t | events < t) under the scorer (or the
    # detector's own predictive surprise, for a detector that reads no scorer)
    # A detector that places a change before the event raising its alarm: per event, the
    # event (index in the row) the change it would alarm on started at (LongTensor), and that
    # change's kind as a code of app.domain.bocpd.KINDS (LongTensor). None: at the event, and
    # the default abrupt/gradual rule.
    located: torch.Tensor | None = None
    kinds: torch.Tensor | None = None


class EventTrace(NamedTuple):
    """One history's drift trace (the rows of a :class:`DriftTrace`, as numpy): what the
    decision rule reads, in serving and in evaluation alike."""

    probabilities: np.ndarray  # float32[n]
    surprise: np.ndarray  # float32[n]
    located: np.ndarray | None = None  # int64[n]
    kinds: np.ndarray | None = None  # int64[n]

    @classmethod
    def rows(cls, trace: DriftTrace, lengths: Sequence[int]) -> list[EventTrace]:
        """Each row of a batch trace, cut to its length."""
        probs = trace.probabilities.float().cpu().numpy()
        surprise = trace.surprise.float().cpu().numpy()
        located = None if trace.located is None else trace.located.long().cpu().numpy()
        kinds = None if trace.kinds is None else trace.kinds.long().cpu().numpy()
        return [cls(probs[b, :n], surprise[b, :n],
                    None if located is None else located[b, :n],
                    None if kinds is None else kinds[b, :n]) for b, n in enumerate(lengths)]


class EngineState(Protocol):
    """A detector's state after the known events of one window (immutable)."""

    @property
    def n(self) -> int:
        """Events it covers."""
        ...

    @property
    def nbytes(self) -> int: ...

    def trace(self) -> EventTrace:
        """The trace over those events (what a replay of them gives)."""
        ...


@runtime_checkable
class IncrementalEngine(Protocol):
    """Carries a detector forward event by event: a drift detector that can be served without
    replaying a user's window on every new event gives one (``incremental_engine(scorer)``).
    ``start`` from whole windows and ``extend`` by new events must give the trace a replay of
    the same window gives (serving and evaluation make the same decisions)."""

    def start(self, windows: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[Any]:
        """States after whole windows (model indices int64[n], epoch seconds float64[n])."""
        ...

    def extend(self, requests: Sequence[tuple[Any, np.ndarray, np.ndarray]]) -> list[Any]:
        """Each (state, new model indices, their epoch seconds) -> the state after them."""
        ...


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

    # Optional, looked up by name:
    # - ``change_points(trace: EventTrace, settings: DriftSettings) -> list[ChangePoint]``:
    #   the detector's own decision rule over one history's trace (the bundle delegates to it;
    #   without it: app.domain.drift.detect_change_points on the probabilities);
    # - ``incremental_engine(scorer) -> IncrementalEngine``: serving carries its state forward
    #   per user instead of replaying the window (without it: a replay per new event).
