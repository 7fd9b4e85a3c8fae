"""Model parts: the protocols a bundle's parts meet and the registry of their kinds."""

from app.ml.parts.protocols import (
    DriftDetector,
    DriftTrace,
    EngineState,
    EventTrace,
    IncrementalEngine,
    ItemEncoder,
    NextItemScorer,
    Part,
)
from app.ml.parts.registry import (
    DEFAULT_KINDS,
    ROLES,
    BundleError,
    PartKind,
    get_kind,
    kind_of,
    load_part,
    load_weights,
    register_part,
    registered_kinds,
    save_part,
)

__all__ = [
    "DEFAULT_KINDS", "ROLES", "BundleError", "DriftDetector", "DriftTrace", "EngineState",
    "EventTrace", "IncrementalEngine", "ItemEncoder",
    "NextItemScorer", "Part", "PartKind", "get_kind", "kind_of", "load_part", "load_weights",
    "register_part", "registered_kinds", "save_part",
]
