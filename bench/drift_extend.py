"""The served drift path's cost per event: feature-gru states built from each case's first
events and extended the rest of the way in chunks, as serving carries a user's state and as
training's check of the bundle replays every drift case (training.quality.served_traces).

    python -m bench.drift_extend [--cases 64] [--events 120] [--repeats 3]

The scorer and head have the ML-1M run's shapes (configs/ml1m.yaml: hidden 64, 2 layers, 2
heads, windows of 200 with the time and position bias, 3,883 items with 384-wide text) and
random weights: the cost does not depend on what the weights hold. Items and gaps are drawn
from a fixed seed. Prints, and writes to bench/results/drift_extend.json, the median seconds
of one pass over the cases and the microseconds per extended event, with the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch

from app.ml.drift_head import DriftHead
from app.ml.incremental import IncrementalDrift
from app.ml.sequence import SequenceInterestModel, SequenceModelConfig
from bench.common import LoadWatch, machine, write_result
from training.quality import SERVED_FIRST, served_states

ITEMS, TEXT_DIM = 3883, 384


def engine(seed: int = 0) -> IncrementalDrift:
    torch.manual_seed(seed)
    config = SequenceModelConfig(hidden_size=64, num_layers=2, num_heads=2, ff_size=256,
                                 max_len=200, time_bias="request", position_bias=True)
    model = SequenceInterestModel(config, ITEMS, TEXT_DIM,
                                  torch.randn(ITEMS + 1, TEXT_DIM)).eval()
    return IncrementalDrift(model, DriftHead(hidden_size=32).eval())


def cases(count: int, events: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(rng.integers(1, ITEMS + 1, events).astype(np.int64),
             1e9 + np.cumsum(rng.choice([0.0, 30.0, 3_600.0, 86_400.0], size=events)))
            for _ in range(count)]


def one_pass(drift: IncrementalDrift, windows: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Seconds to build every case's state from its first events and extend it to the end,
    as training's check of the bundle does."""
    start = time.perf_counter()
    served_states(drift, windows)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=64)
    parser.add_argument("--events", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--output", default="drift_extend", help="result name ('' for none)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    drift, windows = engine(), cases(args.cases, args.events)
    one_pass(drift, windows[:4])  # warm-up: first-call allocations and lazy inits
    with LoadWatch() as load:
        seconds = [one_pass(drift, windows) for _ in range(args.repeats)]
    median = statistics.median(seconds)
    extended = args.cases * max(args.events - SERVED_FIRST, 0)
    result: dict[str, Any] = {
        "command": "python -m bench.drift_extend " + " ".join(argv or sys.argv[1:]),
        "cases": args.cases, "events": args.events, "threads": args.threads,
        "pass_seconds": [round(s, 3) for s in seconds], "median_pass_seconds": round(median, 3),
        "us_per_extended_event": round(median / max(extended, 1) * 1e6, 1),
        "load_average_max": load.max, "machine": machine(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(result)
    if args.output:
        write_result(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
