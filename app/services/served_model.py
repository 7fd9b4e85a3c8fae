"""One registered model version as a worker serves it: the bundle, what it was registered
as, and the catalogue state it serves. A value: a catalogue swap makes a new one
(`dataclasses.replace`); the machinery that runs it (batchers, caches, incremental states)
belongs to the served-version object, `app.services.recommender.Recommender`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.domain.availability import Availability
from app.ml.bundle import InterestModelBundle
from app.ml.topk import TopKIndex

DEFAULT_MAX_BATCH = 64  # histories per forward pass


class ModelUnavailable(RuntimeError):
    """No model is loaded (no champion yet, or the first load failed)."""


@dataclass(frozen=True)
class ServedModel:
    bundle: InterestModelBundle
    name: str
    version: str
    alias: str
    run_id: str | None
    device: str
    loaded_at: datetime
    metrics: dict[str, Any] = field(default_factory=dict)
    max_batch: int = DEFAULT_MAX_BATCH
    # What each catalogue row was embedded from (item id -> CatalogueItem.digest): the
    # catalogue refresher re-embeds an item whose stored text or categories differ.
    catalogue: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    # Retired items and availability windows (never recommended outside them), kept in step
    # with the store by the catalogue refresher like the rows.
    availability: Availability = field(default_factory=Availability)
    # Sizes of the batches run (kind "score", "query" or "drift"): the metrics.
    observe_batch: Callable[[str, int], None] | None = field(default=None, repr=False,
                                                            compare=False)
    # An index over the item vectors (DRIFTREC_TOPK_INDEX, app.services.served_topk): with
    # one, a ranking re-scores the candidates it finds instead of the whole catalogue. Built
    # over the rows of the bundle it was made for; a catalogue swap keeps it, rows appended
    # since are scanned exactly (app.ml.topk.candidates).
    topk: TopKIndex | None = field(default=None, repr=False, compare=False)
