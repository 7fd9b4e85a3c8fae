"""The drift head's replay of one history over a large catalogue: one matrix against slices.

`python -m bench.surprise_chunks [--items 1000000]` → bench/results/surprise_chunks.json.
The drift features score every event's preceding state over the whole catalogue (the event's
surprise and rank). At a million items one history of 200 events is 200 million logits; the
features now take them in blocks of states against slices of the item table above
SURPRISE_WHOLE_MAX_ROWS items (app.ml.drift_head). Each variant runs in a fresh process (its
peak resident memory is its own): a scorer shaped like the ml-100k one (hidden 64, 2 layers,
windows of 50, text 384), random weights (the cost does not depend on them), histories of
200 events, 1 and 4 at once.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.common import ROOT, machine, write_result

# SURPRISE_WHOLE_MAX_ROWS of each variant
VARIANTS = {"one matrix (before)": 1 << 62,
            "blocks of 512 states x slices of 65,536 items (now)": 1 << 17}


def run_variant(items: int, whole_max_rows: int, batch: int, repeats: int) -> dict[str, Any]:
    import torch

    from app.ml import drift_head
    from app.ml.sequence import SequenceInterestModel, SequenceModelConfig

    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    config = SequenceModelConfig(hidden_size=64, num_layers=2, num_heads=2, ff_size=256,
                                 max_len=50)
    model = SequenceInterestModel(config, 1682, text_dim=384).eval()
    text = torch.randn(items + 1, 384)
    text /= text.norm(dim=1, keepdim=True)
    text[0] = 0
    model.set_item_text_embeddings(text, copy=False)
    model.item_table()  # cached, as serving has it
    drift_head.SURPRISE_WHOLE_MAX_ROWS = whole_max_rows
    idx = torch.randint(1, items + 1, (batch, 200))
    times = (torch.arange(200, dtype=torch.float64) * 3600 + 1e9).repeat(batch, 1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        drift_head.drift_features_and_hidden(model, idx, times)
        seconds.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds_median": round(statistics.median(seconds), 3),
            "seconds_runs": [round(s, 3) for s in seconds],
            "peak_rss_mib": round(peak), "peak_rss_increase_mib": round(peak - before)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.surprise_chunks")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # a child run
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant is not None:
        print(json.dumps(run_variant(args.items, VARIANTS[args.variant], args.batch,
                                     args.repeats)))
        return
    rows = []
    for batch in (1, 4):
        for name in VARIANTS:
            done = subprocess.run([sys.executable, "-m", "bench.surprise_chunks", "--items",
                                   str(args.items), "--repeats", str(args.repeats),
                                   "--variant", name, "--batch", str(batch)],
                                  cwd=ROOT, capture_output=True, text=True, check=True)
            row = {"variant": name, "histories": batch, **json.loads(done.stdout)}
            print(row, flush=True)
            rows.append(row)
    write_result("surprise_chunks", {
        "benchmark": "drift features (the drift head's replay) of histories of 200 events "
                     "over a large catalogue, one process per variant",
        "command": "python -m bench.surprise_chunks " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"), "machine": machine(), "items": args.items,
        "rows": rows})


if __name__ == "__main__":
    main()
