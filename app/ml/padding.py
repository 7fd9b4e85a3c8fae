"""Right-padding of histories: the one way variable-length rows become a batch tensor."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def right_pad(rows: Sequence[Sequence[float] | np.ndarray], dtype: torch.dtype,
              width: int | None = None) -> torch.Tensor:
    """Rows as a [B, width] tensor, each left-aligned and padded with zeros on the right
    (index 0 is the padding item). `width`: the longest row (at least 1) unless given."""
    width = max(1, max((len(r) for r in rows), default=0)) if width is None else width
    out = torch.zeros(len(rows), width, dtype=dtype)
    for b, row in enumerate(rows):
        if len(row):
            out[b, : len(row)] = torch.as_tensor(np.asarray(row), dtype=dtype)
    return out
