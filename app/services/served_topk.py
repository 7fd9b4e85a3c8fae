"""The served model's top-k index (DRIFTREC_TOPK_INDEX): built when a version is prepared,
over the item vectors the scorer scores by (app.ml.topk)."""

from __future__ import annotations

import logging
import time

from app.core.config import Settings
from app.ml.bundle import InterestModelBundle
from app.ml.topk import TopKIndex, TopKUnavailable, build_topk_index

logger = logging.getLogger("driftrec.models")


class TopKSettingError(RuntimeError):
    """DRIFTREC_TOPK_INDEX names an index this installation cannot build."""


def build_served_topk(settings: Settings, bundle: InterestModelBundle) -> TopKIndex | None:
    """The index `settings.topk_index` asks for over `bundle`'s item vectors; None for
    "exact" (rankings scan the whole catalogue, as without an index)."""
    if settings.topk_index == "exact":
        return None
    vectors = bundle.item_vectors()
    started = time.perf_counter()
    try:
        index = build_topk_index(settings.topk_index, vectors, nprobe=settings.topk_nprobe,
                                 threads=settings.topk_threads)
    except TopKUnavailable as error:
        raise TopKSettingError(f"DRIFTREC_TOPK_INDEX={settings.topk_index} needs faiss: {error}; "
                               "or set DRIFTREC_TOPK_INDEX=exact") from error
    logger.info("built a %s top-k index over %d item vectors in %.1f s", settings.topk_index,
                index.rows, time.perf_counter() - started)
    return index
