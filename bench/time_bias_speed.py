"""Model time of one recommendation with and without the relative attention bias.

    OMP_NUM_THREADS=1 python -m bench.time_bias_speed [--rounds 300]

Times ``InterestModelBundle.recommend`` (what `/recommend` runs per request once the history is
read: encoding the history, the Transformer over its last ``max_len`` events, scores over the
catalogue, top-k) for bundles that differ only in the bias settings, at the shapes of the
ml-100k and ML-1M configs (1,682 items and windows of 50; 3,883 items and windows of 200; a
full window of history). Weights are random: the time does not depend on their values. The
variants are timed in turns, round by round, so that a change in the machine's load falls on
all of them alike; medians per variant, and each one's ratio to the bias-off median.
Writes bench/results/time_bias_speed.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import numpy as np
import torch

from app.ml.bundle import DriftSettings, InterestModelBundle
from app.ml.drift_head import N_FEATURES, DriftHead
from app.ml.encoder import ItemTextEncoder
from app.ml.sequence import SequenceInterestModel, SequenceModelConfig
from app.ml.topics import topics_from_categories
from bench.common import machine, write_result

SHAPES = {"ml-100k": (1682, 50), "ml-1m": (3883, 200)}
VARIANTS: dict[str, dict[str, Any]] = {
    "off": {},
    "event": {"time_bias": "event"},
    "request": {"time_bias": "request"},
    "request_pos": {"time_bias": "request", "position_bias": True},
}


def make_bundle(encoder: ItemTextEncoder, n_items: int, max_len: int,
                overrides: dict[str, Any]) -> InterestModelBundle:
    torch.manual_seed(0)
    config = SequenceModelConfig(max_len=max_len, **overrides)
    model = SequenceInterestModel(config, n_items, encoder.dim)
    model.set_item_text_embeddings(torch.randn(n_items + 1, encoder.dim))
    item_ids = [f"i{i}" for i in range(n_items)]
    categories = [(f"g{i % 18}",) for i in range(n_items)]
    return InterestModelBundle(
        encoder=encoder, sequence_model=model, drift_detector=DriftHead(N_FEATURES, 8),
        drift=DriftSettings(threshold=0.5), item_ids=item_ids,
        topics=topics_from_categories(np.random.default_rng(0).normal(size=(n_items, 8)),
                                      categories),
        dataset_fingerprint="speed", training_config={}, metrics={})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    encoder = ItemTextEncoder.pretrained("cpu", num_layers=1)
    rng = np.random.default_rng(0)
    results: dict[str, Any] = {}
    for shape, (n_items, max_len) in SHAPES.items():
        bundles = {name: make_bundle(encoder, n_items, max_len, overrides)
                   for name, overrides in VARIANTS.items()}
        history = [f"i{i}" for i in rng.integers(0, n_items, max_len)]
        times = list(1e9 + np.cumsum(rng.integers(0, 7200, max_len)).astype(float))
        at = times[-1] + 600.0
        for bundle in bundles.values():  # warm-up (item table cache, allocator)
            for _ in range(5):
                bundle.recommend(history, times, k=10, at=at)
        samples: dict[str, list[float]] = {name: [] for name in bundles}
        for _ in range(args.rounds):
            for name, bundle in bundles.items():
                start = time.perf_counter()
                bundle.recommend(history, times, k=10, at=at)
                samples[name].append(time.perf_counter() - start)
        base = statistics.median(samples["off"])
        results[shape] = {
            "items": n_items, "history_events": max_len,
            "median_ms": {n: round(1e3 * statistics.median(s), 3) for n, s in samples.items()},
            "p90_ms": {n: round(1e3 * float(np.percentile(s, 90)), 3)
                       for n, s in samples.items()},
            "ratio_to_off": {n: round(statistics.median(s) / base, 3)
                             for n, s in samples.items()},
        }
        print(shape, results[shape])
    payload = {"benchmark": "model time per recommendation, relative attention bias on/off",
               "command": f"OMP_NUM_THREADS=1 python -m bench.time_bias_speed --rounds "
                          f"{args.rounds}",
               "rounds": args.rounds, "torch_threads": 1, "shapes": results,
               "load_average": list(os.getloadavg()), "machine": machine(),
               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_result("time_bias_speed", payload)


if __name__ == "__main__":
    main()
