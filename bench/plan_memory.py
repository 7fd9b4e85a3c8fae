"""Measure the constants of the training plan's memory and time model (training/plan.py).

`OMP_NUM_THREADS=1 python -m bench.plan_memory` → bench/results/plan_memory.json.
Each case runs in a fresh process, so its peak resident memory (ru_maxrss) is its own: the
case records its current RSS once its inputs exist, runs the step it measures, and reports
the rise of the peak over that. Dividing the rise by the size of the term it stands for
(logits, attention matrices, item rows, ...) gives the bytes per unit the plan uses.
torch allocates outside Python's allocator, so tracemalloc would not see these tensors.

Times: each case also times the plan's matmul (training.plan.measure_flop_rate) in its own
process, and reports its step's FLOPs (the plan's formulas) over seconds x that rate: the
efficiencies and FLOP-equivalents of the plan's time model.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from typing import Any

from bench.common import machine, write_result


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        match = re.search(rf"{field}:\s+(\d+) kB", status.read())
    assert match is not None, field
    return int(match.group(1)) / 1024


def _current_mib() -> float:
    """Resident memory now, after resetting the peak to it (Linux: clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    return _status_mib("VmRSS")


def _peak_mib() -> float:
    return _status_mib("VmHWM")


def _model(n_items: int, max_len: int, use_text: bool = False, hidden: int = 64) -> Any:
    import torch

    from app.ml.sequence import SequenceInterestModel, SequenceModelConfig

    torch.manual_seed(0)
    config = SequenceModelConfig(hidden_size=hidden, num_layers=2, num_heads=2, ff_size=256,
                                 dropout=0.5, attn_dropout=0.5, max_len=max_len,
                                 use_text=use_text, use_time=True)
    return SequenceInterestModel(config, n_items, 384)


def _steps(model: Any, batch: int, length: int, negatives: int, steps: int = 3) -> float:
    """Run `steps` AdamW training steps on full random windows; the fastest but the first."""
    import torch

    from training.sequence_trainer import window_loss

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    items = torch.randint(1, model.n_items + 1, (batch, length))
    times = 1e9 + torch.arange(length, dtype=torch.float64).repeat(batch, 1) * 3600
    targets = torch.randint(1, model.n_items + 1, (batch, length))
    generator = torch.Generator().manual_seed(0)
    model.train()
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        loss = window_loss(model, items, times, targets, negatives, generator, times)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - started)
    return min(seconds[1:])


def _rate() -> float:
    from training.plan import measure_flop_rate

    return measure_flop_rate(64, seconds=0.5)


def _step_efficiency(n_items: int, batch: int, length: int, negatives: int, seconds: float,
                     rate: float, text: bool = False) -> float:
    """The plan's FLOPs of this step (full windows) over seconds x the matmul rate."""
    from training.plan import STEP_EFFICIENCY, CatalogueSize, step_seconds
    from training.recommender import RecommenderConfig

    config = RecommenderConfig(use_text=text)
    size = CatalogueSize(items=n_items, users=0, events=0, repeat_share=0.0)  # full windows
    modelled = step_seconds(size, config, negatives, batch, length, rate, text)
    return modelled * STEP_EFFICIENCY / seconds


def case_overhead() -> dict[str, Any]:
    """What a training process holds before any data: torch, transformers, mlflow, the app."""
    import training.pipeline  # noqa: F401  (imports torch, transformers, mlflow, sklearn)
    from app.ml.encoder import ItemTextEncoder  # noqa: F401

    return {"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def case_encoder(steps: int = 3, n_embed: int = 2000) -> dict[str, Any]:
    """Load all-MiniLM-L6-v2 and fine-tune it `steps` steps of 96 pairs of texts long enough
    to fill the 64 tokens; then embed `n_embed` texts (the seconds of both)."""
    import torch

    from app.ml.encoder import ItemTextEncoder
    from training.data.sequences import UserSequence
    from training.encoder_trainer import EncoderTrainConfig, finetune_encoder

    before = _current_mib()
    encoder = ItemTextEncoder.pretrained("cpu")
    texts = [f"Film number {i}: a story of {i % 7} friends in a town by the sea, where "
             f"nothing happens for years until a stranger arrives with a suitcase full of "
             f"letters addressed to people who died long ago, drama and comedy "
             f"({1950 + i % 60}), directed by someone whose name nobody remembers now"
             for i in range(max(2000, n_embed))]
    rng = torch.Generator().manual_seed(0)
    sequences = [UserSequence(str(u), torch.randint(1, 2001, (40,), generator=rng).numpy(),
                              torch.arange(40, dtype=torch.float64).numpy())
                 for u in range(50)]
    started = time.perf_counter()
    finetune_encoder(encoder, texts, sequences, EncoderTrainConfig(steps=steps),
                     torch.device("cpu"), 0, progress=False)
    step_s = (time.perf_counter() - started) / steps
    rise = _peak_mib() - before
    tokens = len(encoder.tokenize(texts[:1])["input_ids"][0])
    started = time.perf_counter()
    encoder.embed(texts[:n_embed])
    embed_s = (time.perf_counter() - started) / n_embed
    rate = _rate()
    return {"rise_mib": rise, "tokens_per_text": tokens, "step_seconds": step_s,
            "embed_seconds_per_item": embed_s, "flop_rate": rate,
            "step_flop_equivalents": step_s * rate, "embed_flop_equivalents": embed_s * rate}


def case_logits(n_items: int, batch: int, length: int, negatives: int) -> dict[str, Any]:
    """One loss term: full softmax (negatives = 0) or sampled, on a model with small tables."""
    model = _model(n_items, length)
    before = _current_mib()
    seconds = _steps(model, batch, length, negatives)
    columns = n_items + 1 if negatives == 0 else negatives + 1
    rise = _peak_mib() - before
    rate = _rate()
    return {"rise_mib": rise, "seconds": seconds,
            "bytes_per_logit": rise * 2**20 / (batch * length * columns), "flop_rate": rate,
            "step_efficiency": _step_efficiency(n_items, batch, length, negatives, seconds,
                                                rate)}


def case_activations(batch: int, length: int) -> dict[str, Any]:
    """The transformer's activations and attention (a 100-item catalogue: no logits term)."""
    model = _model(100, length)
    before = _current_mib()
    seconds = _steps(model, batch, length, 0)
    rise = _peak_mib() - before
    rate = _rate()
    return {"rise_mib": rise, "seconds": seconds, "flop_rate": rate,
            "step_efficiency": _step_efficiency(100, batch, length, 0, seconds, rate)}


def case_items(n_items: int, hidden: int) -> dict[str, Any]:
    """Per-item bytes of ours' tables in training (ID embedding, its gradient and Adam
    states, the text projection of every item and its gradient), the text table excluded."""
    import torch

    text = torch.randn(n_items + 1, 384)
    model = _model(n_items, 10, use_text=True, hidden=hidden)
    model.set_item_text_embeddings(text, copy=False)  # frees the model's own zero table
    before = _current_mib()
    seconds = _steps(model, 8, 10, 256)
    rise = _peak_mib() - before
    rate = _rate()
    # the step is almost all the two text projections of every item: 8 * rows * 384 * hidden
    table_flops = 8 * (n_items + 1) * 384 * hidden
    return {"rise_mib": rise, "seconds": seconds,
            "bytes_per_item_row": rise * 2**20 / ((n_items + 1) * hidden * 4),
            "flop_rate": rate, "table_efficiency": table_flops / (seconds * rate)}


def case_evaluation(users: int, n_items: int, length: int = 50) -> dict[str, Any]:
    """The validation pass of every epoch (training.evaluate.evaluate_model): score each
    user's last window against the catalogue and rank the targets, unmasked and masked."""
    import numpy as np
    import torch

    from training.data.sequences import UserSequence, leave_one_out
    from training.evaluate import all_metrics, evaluate_model

    rng = np.random.default_rng(0)
    split = leave_one_out([UserSequence(str(u), rng.integers(1, n_items + 1, length + 2),
                                        1e9 + 3600.0 * np.arange(length + 2))
                           for u in range(users)])
    model = _model(n_items, length).eval()
    before = _current_mib()
    evaluate_model(model, split, torch.device("cpu"), parts=("val",))
    rise = _peak_mib() - before
    cells = users * (n_items + 1)
    # the ranking alone (compare, mask, count), timed on its own: the forward pass is the
    # step model's
    scores = torch.randn(users, n_items + 1)
    inputs, targets = split.valid_inputs(), split.valid_items
    started = time.perf_counter()
    all_metrics(scores, inputs, targets)
    seconds = time.perf_counter() - started
    rate = _rate()
    return {"rise_mib": rise, "bytes_per_cell": rise * 2**20 / cells,
            "ranking_seconds": seconds, "flop_rate": rate,
            "cell_flop_equivalents": seconds * rate / cells}


def case_snapshot_items(n_items: int) -> dict[str, Any]:
    """Python objects of the catalogue: one SnapshotItem (id, title, text, a category)."""
    from training.data.store import SnapshotItem

    before = _current_mib()
    items = [SnapshotItem(str(i), f"Product {i}", f"Product {i}: a useful thing for the "
                          f"house and garden, model {i * 7}", ("Garden",))
             for i in range(n_items)]
    rise = _peak_mib() - before
    return {"rise_mib": rise, "bytes_per_item": rise * 2**20 / len(items)}


CASES = {"overhead": case_overhead, "encoder": case_encoder, "logits": case_logits,
         "activations": case_activations, "items": case_items,
         "evaluation": case_evaluation, "snapshot_items": case_snapshot_items}

PLAN = [
    ("overhead", {}),
    ("encoder", {}),
    ("logits", {"n_items": 20_000, "batch": 64, "length": 50, "negatives": 0}),
    ("logits", {"n_items": 40_000, "batch": 64, "length": 50, "negatives": 0}),
    ("logits", {"n_items": 1682, "batch": 128, "length": 50, "negatives": 0}),
    ("logits", {"n_items": 200_000, "batch": 128, "length": 100, "negatives": 2048}),
    ("activations", {"batch": 256, "length": 200}),
    ("activations", {"batch": 512, "length": 100}),
    ("items", {"n_items": 200_000, "hidden": 64}),
    ("evaluation", {"users": 1000, "n_items": 20_000}),
    ("snapshot_items", {"n_items": 200_000}),
]


def run_case(name: str, args: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench.plan_memory", "--case", name,
                          "--args", json.dumps(args)], check=True, capture_output=True,
                         text=True)
    return {"case": name, "args": args, **json.loads(out.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", choices=sorted(CASES))
    parser.add_argument("--args", default="{}")
    args = parser.parse_args()
    if args.case:
        result = CASES[args.case](**json.loads(args.args))
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                          for k, v in result.items()}))
        return
    rows = []
    for name, case_args in PLAN:
        rows.append(run_case(name, case_args))
        print(json.dumps(rows[-1]), flush=True)
    path = write_result("plan_memory", {"machine": machine(),
                                        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                                        "cases": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
