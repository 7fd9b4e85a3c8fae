"""Bundles for tests: model loaders for tests that load the champion in other processes (Ray
actors unpickle a loader by module name: it must live in an importable module, not a test
module), and a small untrained bundle built in memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from app.ml.bundle import DriftSettings, InterestModelBundle
from app.ml.drift_head import N_FEATURES, DriftHead
from app.ml.encoder import ItemTextEncoder
from app.ml.loader import load_bundle
from app.ml.sequence import SequenceInterestModel, SequenceModelConfig
from app.ml.topics import topics_from_categories

GENRES = [("Action",), ("Comedy",), ("Drama",), ("Action", "Sci-Fi"), ("Horror",)]


def small_bundle(encoder: ItemTextEncoder, n_items: int, **fields: Any) -> InterestModelBundle:
    """An untrained bundle over `n_items` films with genres: real modules, random (seeded)
    weights; `fields`: more InterestModelBundle fields (e.g. metrics)."""
    torch.manual_seed(0)
    item_ids = [f"m{i}" for i in range(n_items)]
    categories = [GENRES[i % len(GENRES)] for i in range(n_items)]
    texts = [f"Film {i}. Genres: {', '.join(c)}." for i, c in enumerate(categories)]
    embeddings = encoder.embed(texts)
    config = SequenceModelConfig(hidden_size=16, num_layers=1, ff_size=32, max_len=8)
    model = SequenceInterestModel(config, n_items, encoder.dim)
    model.set_item_text_embeddings(torch.cat([torch.zeros(1, encoder.dim), embeddings]))
    return InterestModelBundle(
        encoder=encoder, sequence_model=model, drift_detector=DriftHead(N_FEATURES, 8),
        drift=DriftSettings(threshold=0.5, min_events=3, cooldown=2, max_events=30),
        item_ids=item_ids, topics=topics_from_categories(embeddings.numpy(), categories),
        dataset_fingerprint="test-fingerprint", training_config={"seed": 0}, **fields)


def alarm_on_every_event(path: Path, device: str) -> InterestModelBundle:
    """The champion with drift threshold 0: the tiny model rarely crosses its calibrated one
    on 40 users, so a scan with this leaves drift records to compare."""
    bundle = load_bundle(path, device)
    bundle.drift.threshold = 0.0
    return bundle
