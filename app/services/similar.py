"""Similar items ("more like this") from the served model, answered from memory.

The served model's item representations (what it scores items by) are made unit length once
per served catalogue and kept with the served model (`ServedModel.derived`): a new catalogue
or version is a new served model, with tables of its own. An item the model has trained on is
compared by those representations; an item it has not (cold start: its representation is its
text alone) by the text encoder's embeddings. Retired items and items outside their window
are never returned. The only database read is the titles of the answer.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from sqlalchemy.orm import Session

from app.domain import ranking, similarity
from app.services.model_manager import ServedModel
from app.store import repository

Source = Literal["item_table", "text"]


class NotServed(LookupError):
    """The item is not (yet) in the served model's catalogue."""

    def __init__(self, item_id: str) -> None:
        super().__init__(f"item '{item_id}' is not in the served catalogue (a new item is "
                         "embedded within about a second of its upsert)")
        self.item_id = item_id


def unit_table(model: ServedModel, source: Source) -> np.ndarray:
    """float32[N, H] unit rows of the served model's item table (or text embeddings)."""
    table = model.derived.get(source)
    if table is None:
        with model.derived_lock:
            table = model.derived.get(source)
            if table is None:
                vectors = (model.bundle.item_vectors() if source == "item_table"
                           else model.bundle.text_vectors())
                table = similarity.unit_rows(vectors)
                model.derived[source] = table
    return table


def similar_items(session: Session, model: ServedModel, item_id: str, k: int
                  ) -> dict[str, Any]:
    bundle = model.bundle
    index = bundle.index_of(item_id)
    if index is None:
        raise NotServed(item_id)
    source: Source = "item_table" if bundle.is_trained(item_id) else "text"
    table = unit_table(model, source)
    unavailable = model.availability.unavailable(datetime.now(UTC).timestamp())
    excluded = [i - 1 for i in (bundle.index_of(u) for u in unavailable) if i is not None]
    positions, scores = similarity.nearest(table, index - 1, k, excluded)
    names = ranking.explain_topics(positions, bundle.topics.item_topics, bundle.topics.names)
    ids = [bundle.item_ids[int(p)] for p in positions]
    titles = repository.item_titles(session, ids)
    return {
        "item_id": item_id, "model_version": model.version, "source": source,
        "items": [{"item_id": i, "title": titles.get(i),
                   "similarity": float(s), "topic": name}
                  for i, s, name in zip(ids, scores, names, strict=True)],
    }
