"""Serving catalogue: the bundle's training items plus items the store has that it never saw.

Items added after training (cold start) are embedded from their text by the bundle's encoder
and appended to the sequence model's item table: they have no learned ID embedding, so the
model scores them by their text alone, and they get a topic from their categories or the
nearest topic centroid. The returned bundle is a new object: the one serving requests stays
untouched, so swapping the two is atomic for requests in flight.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from app.ml.bundle import InterestModelBundle
from app.ml.parts import ItemEncoder


@dataclass(frozen=True, slots=True)
class CatalogueItem:
    item_id: str
    text: str
    categories: tuple[str, ...] = ()

    @property
    def digest(self) -> bytes:
        """What the served model's row of this item depends on (text and categories)."""
        return hashlib.blake2b("\x1f".join((self.text, *self.categories)).encode(),
                               digest_size=16).digest()


def item_text(title: str, text: str | None) -> str:
    """What the encoder reads for a stored item: its text, or its title when it has none."""
    return text if text else title


def with_new_items(bundle: InterestModelBundle, items: Sequence[CatalogueItem],
                   replace: bool = False,
                   embedded: tuple[Sequence[str], np.ndarray] | None = None
                   ) -> InterestModelBundle:
    """A copy of `bundle` whose catalogue also holds `items` (those it knows are skipped, or
    with `replace` re-embedded from their new text and categories); `embedded`: rows this
    bundle's encoder already made (stored embeddings), used instead of running it again."""
    return bundle.with_items([i.item_id for i in items], [i.text for i in items],
                             [i.categories for i in items], replace=replace,
                             embedded=embedded)


_KEYS: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()


def encoder_key(encoder: ItemEncoder) -> str:
    """What names an encoder's embeddings in the store: a digest of its kind, its settings
    that change what it returns (the token limit) and every weight. Each model version
    fine-tunes its own encoder, so its rows are its own; two bundles with the same encoder
    weights share them. Computed once per encoder object (bundle copies share theirs)."""
    key = _KEYS.get(encoder)
    if key is None:
        digest = hashlib.blake2b(digest_size=20)
        digest.update(f"{type(encoder).__module__}.{type(encoder).__qualname__}".encode())
        digest.update(repr((encoder.dim, getattr(encoder, "max_length", None))).encode())
        state = encoder.state_dict() if isinstance(encoder, torch.nn.Module) else {}
        for name in sorted(state):
            tensor = state[name].detach().cpu().contiguous()
            digest.update(name.encode())
            digest.update(str(tensor.dtype).encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        key = digest.hexdigest()
        _KEYS[encoder] = key
    return key
