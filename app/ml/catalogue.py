"""Serving catalogue: the bundle's training items plus items the store has that it never saw.

Items added after training (cold start) are embedded from their text by the bundle's encoder
and appended to the sequence model's item table: they have no learned ID embedding, so the
model scores them by their text alone, and they get a topic from their categories or the
nearest topic centroid. The returned bundle is a new object: the one serving requests stays
untouched, so swapping the two is atomic for requests in flight.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from app.ml.bundle import InterestModelBundle


@dataclass(frozen=True, slots=True)
class CatalogueItem:
    item_id: str
    text: str
    categories: tuple[str, ...] = ()


def item_text(title: str, text: str | None) -> str:
    """What the encoder reads for a stored item: its text, or its title when it has none."""
    return text if text else title


def with_new_items(bundle: InterestModelBundle, items: Sequence[CatalogueItem],
                   batch_size: int = 64) -> InterestModelBundle:
    """A copy of `bundle` whose catalogue also holds `items` (those it already knows are skipped).

    Call from one thread at a time: the encoder's fast tokenizer is not thread-safe.
    """
    new = [item for item in items if bundle.index_of(item.item_id) is None]
    if not new:
        return bundle
    embeddings = bundle.encoder.embed([item.text for item in new], batch_size=batch_size)
    model = copy.deepcopy(bundle.sequence_model)
    table = torch.cat([model.item_text, embeddings.to(model.item_text.device,
                                                      model.item_text.dtype)])
    model.set_item_text_embeddings(table)
    vectors = embeddings.float().cpu().numpy()
    new_topics = [bundle.topics.assign(vectors[i], item.categories) for i, item in enumerate(new)]
    topics = dataclasses.replace(
        bundle.topics,
        item_topics=np.concatenate([bundle.topics.item_topics,
                                    np.asarray(new_topics, dtype=np.int64)]),
    )
    return dataclasses.replace(bundle, sequence_model=model, topics=topics,
                               item_ids=[*bundle.item_ids, *(item.item_id for item in new)])
