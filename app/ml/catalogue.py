"""Serving catalogue: the bundle's training items plus items the store has that it never saw.

Items added after training (cold start) are embedded from their text by the bundle's encoder
and appended to the sequence model's item table: they have no learned ID embedding, so the
model scores them by their text alone, and they get a topic from their categories or the
nearest topic centroid. The returned bundle is a new object: the one serving requests stays
untouched, so swapping the two is atomic for requests in flight.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from app.ml.bundle import InterestModelBundle


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
                   replace: bool = False) -> InterestModelBundle:
    """A copy of `bundle` whose catalogue also holds `items` (those it knows are skipped, or
    with `replace` re-embedded from their new text and categories)."""
    return bundle.with_items([i.item_id for i in items], [i.text for i in items],
                             [i.categories for i in items], replace=replace)
