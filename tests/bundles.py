"""Model loaders for tests that load the champion in other processes (Ray actors unpickle a
loader by module name: it must live in an importable module, not a test module)."""

from __future__ import annotations

from pathlib import Path

from app.ml.bundle import InterestModelBundle
from app.ml.loader import load_bundle


def alarm_on_every_event(path: Path, device: str) -> InterestModelBundle:
    """The champion with drift threshold 0: the tiny model rarely crosses its calibrated one
    on 40 users, so a scan with this leaves drift records to compare."""
    bundle = load_bundle(path, device)
    bundle.drift.threshold = 0.0
    return bundle
