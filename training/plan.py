"""The training plan: settings that fit the catalogue and a memory budget, with estimates.

``plan_training`` reads the size of the snapshot (``CatalogueSize``: items, users, events,
repeat share) and the recommender config, and picks the loss (the full softmax, or sampled
negatives), the batch, the history length and the learning rate so that the estimated peak
memory of the run stays within ``memory_budget_mib``. It also estimates the time of an epoch
of ``ours`` and of the whole training. ``run_training`` prints the plan before it starts,
applies its overrides when the config says ``plan: auto`` and records it in the quality report
and on the MLflow run.

Rules, in order (``plan: auto``; ``off`` keeps the config and only reports the estimates):

1. The loss. The full softmax stays when the catalogue has at most
   ``FULL_SOFTMAX_MAX_ITEMS`` items and its logits (batch x window x catalogue) take at most
   ``LOGITS_SHARE`` of the budget; otherwise the plan samples ``SAMPLED_NEGATIVES`` negatives
   (a config that already samples keeps its own count). With a time budget, a full softmax
   that leaves fewer than ``MIN_EPOCHS_IN_BUDGET`` epochs of ``ours`` inside its share of
   the budget also gives way to sampled negatives when they at least halve the epoch.
2. The memory budget. While the estimated peak is over the budget the batch is halved (down
   to ``MIN_BATCH``), then the history length (down to ``MIN_MAX_LEN``). A catalogue whose
   fixed terms alone (tables, text embeddings, the encoder, the process) exceed the budget
   gets the smallest settings and a warning: no setting of these fits.
3. The learning rate follows a halved batch by the square-root rule (Adam's noise scale), so
   smaller steps are not also slower ones.

The memory model is a sum of measured terms (``bench/plan_memory.py``, in fresh processes:
the rise of the kernel's peak RSS over the step measured, divided by the size of the term;
``bench/results/plan_memory.json``). It counts the largest of three phases (encoder
fine-tuning; embedding the items; training ``ours`` with its validation) over what the whole
run holds (the process, the snapshot, the encoder's weights); the stages after the sequence
models (drift fitting, baselines, evaluation) are not modelled: the measured peak RSS is
recorded next to the budget in the report, and the log warns when it went over.

The time model counts FLOPs per step and divides them by a rate measured when planning (a
matmul of the output layer's shape for about 0.2 s), scaled by efficiencies measured against
whole training steps on the same machine (the same bench file).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from training.budget import DEFAULT_SHARES, StageShares
from training.data.store import InteractionSnapshot
from training.evaluate import block_rows
from training.recommender import RecommenderConfig

MIB = float(2**20)
# The default budget: the development machine has 24 GB; the service (API workers with a
# model each, about 1 GB apiece at ml-100k sizes), PostgreSQL and MLflow run beside a retrain,
# so a third of it is the training's. The ml-100k run peaks at 3.7 GB and ML-1M at 4.2 GB
# (bench/results/quality*.json), well inside it.
DEFAULT_MEMORY_GB = 8.0

# Loss rule. Above this many items the full softmax's output layer is over 85% of a step's
# work at the default widths (2 * items * hidden FLOPs a position, against about 0.3 M for
# the 2-layer transformer) and its logits grow with the catalogue; 2,048 sampled negatives
# cost a tenth of it at this size. Catalogues the reference runs were tuned on (1,682 and
# 3,883 items) stay below it.
FULL_SOFTMAX_MAX_ITEMS = 20_000
LOGITS_SHARE = 0.25  # the full softmax's logits take at most this share of the budget
# Klenitskiy & Vasilev (2023) match the full softmax on ML-1M with about 3,000 uniform
# negatives; ML-1M's reference run samples 1,024 for time. 2,048 sits between them.
SAMPLED_NEGATIVES = 2048
MIN_BATCH = 16  # below this, steps are too noisy for the recipe's learning rate
MIN_MAX_LEN = 10  # below this, the window hardly holds a session
MIN_EPOCHS_IN_BUDGET = 3  # fewer epochs of ours in its share of the time budget: too few

# Memory terms, measured by bench/plan_memory.py (bench/results/plan_memory.json) on the
# 2-core development machine, one thread, CPU; each in bytes of resident memory.
PROCESS_OVERHEAD_MIB = 580.0  # peak RSS of a process that imported training.pipeline (torch,
# transformers, mlflow, sklearn) and the encoder module: 564 MiB measured
ENCODER_WEIGHTS_MIB = 100.0  # all-MiniLM-L6-v2 in fp32 (22.7 M parameters) and its tokenizer
ENCODER_FINETUNE_MIB_PER_TOKEN = 70.0  # rise while fine-tuning 96 pairs (up to 192 texts
# padded to the longest), 6 layers, per token of that length: 3,821 to 3,972 MiB at 56
# tokens (the AdamW states and the activations); scaled by pairs, tokens and layers
CHARS_PER_TOKEN = 3.0  # item texts in MiniLM's WordPiece vocabulary: 2.96 characters a token
# on ml-100k's texts (titles, years, genres), whose 192-text batches pad to 30 tokens on
# average against 99th-percentile characters / 3 + 2 = 29.7
SNAPSHOT_ITEM_BYTES = 400  # a SnapshotItem (id, title, text, categories) in Python objects
EVENT_BYTES = 64  # the snapshot's arrays (30 bytes an event) and the users' sequences and split
LOGIT_BYTES = 13.0  # per logit of a training step: the logits, log-softmax and their gradient
# (12.1 to 12.8 bytes: the rise between the 20,000- and 40,000-item full-softmax steps)
ATTENTION_BYTES = 18.0  # per attention weight per layer (scores, softmax, dropout mask,
# gradients): 13.9 to 22.8 bytes, from two shapes of equal tokens (256 x 200, 512 x 100)
TOKEN_BYTES = 21.0  # per (padded) window position, per layer, per unit of 4 * hidden + ff:
# 17.7 to 22.5 bytes from the same two shapes; the scaling with the widths is assumed
STEP_FIXED_MIB = 100.0  # what a step holds besides these (autograd, allocator): the measured
# steps rose 20 to 90 MiB above the sum of the terms
ITEM_ROW_COPIES = 8.0  # ours's item table in training, in copies of items x hidden fp32: the
# weight, its gradient, two AdamW states, and the text projection of every item (computed
# each step) with its gradient
WINDOW_BYTES = 64  # per window position: items, times, targets, target times (8 bytes each),
# twice while an epoch's re-drawn windows replace the last ones
EVAL_BYTES_PER_CELL = 25.0  # per user x item score while a block is scored and ranked (the
# logits, the masked copy, comparisons): 23.7 bytes through evaluate_model
TEXT_DIM = 384  # the encoder's embedding width

# Time model: efficiencies against the matmul rate measured at plan time (same bench file).
# The machine was shared while measuring (the rate moved between 25 and 97 GFLOP/s from one
# process to the next), so these are medians over several shapes and two runs of the bench,
# good to a factor of 1.5.
STEP_EFFICIENCY = 0.4  # a training step's FLOPs (transformer and output layer) run at this
# share of the output-layer matmul's rate: 0.21 to 0.75 over six shapes, medians 0.34 and 0.45
TABLE_EFFICIENCY = 1.0  # the text projection of every item (a tall matmul): 1.06 and 1.16
EVAL_CELL_FLOPS = 700.0  # ranking one user x item score (compare, mask, count; memory-bound),
# in FLOP-equivalents: 11 to 12 ns a cell at 57 to 60 GFLOP/s
ENCODER_STEP_FLOPS_PER_TOKEN = 1.5e10  # one fine-tuning step of 96 pairs, per token of the
# padded length, in FLOP-equivalents (1.2e10 to 1.8e10 measured at 56 tokens)
EMBED_ITEM_FLOPS_PER_TOKEN = 2.3e7  # embedding one item text without gradients, per token
# (1.9e7 to 2.6e7)
# Epochs until patience stops training: the ml-100k reference run stopped ours after 40
# epochs at patience 10 (sasrec_id after 29), so about four times the patience.
EPOCHS_PER_PATIENCE = 4
BENCH_SHAPE = (2048, 4096)  # rows x columns of the plan-time matmul (of width hidden)


@dataclass(frozen=True)
class CatalogueSize:
    """What the plan reads of a snapshot."""

    items: int
    users: int  # users with at least one event (of the first max_users, when set)
    events: int
    repeat_share: float  # share of events whose item the user had consumed before
    text_tokens: int | None = None  # tokens of a long item text (99th percentile, estimated
    # from its characters); None: the encoder's max_length (the worst case)


def catalogue_size(snapshot: InteractionSnapshot, max_users: int | None = None
                   ) -> CatalogueSize:
    """The size of ``snapshot`` as training sees it (the first ``max_users`` users)."""
    users, items = snapshot.event_user, snapshot.event_item
    if max_users is not None:
        keep = users < max_users
        users, items = users[keep], items[keep]
    events = len(users)
    pairs = users.astype(np.int64) * max(len(snapshot.items), 1) + items
    distinct = len(np.unique(pairs)) if events else 0
    chars = np.fromiter((len(item.text) for item in snapshot.items), np.int64,
                        len(snapshot.items))
    tokens = int(np.percentile(chars, 99) / CHARS_PER_TOKEN) + 2 if len(chars) else None
    return CatalogueSize(items=len(snapshot.items), users=len(np.unique(users)),
                         events=events,
                         repeat_share=(events - distinct) / events if events else 0.0,
                         text_tokens=tokens)


@dataclass(frozen=True)
class TrainingPlan:
    loss_negatives: int  # 0 = full softmax
    batch_size: int
    max_len: int
    learning_rate: float
    estimated_peak_mib: float
    estimated_epoch_seconds: float  # one epoch of ours (training and validation)
    estimated_total_seconds: float  # encoder, ours and sasrec_id at their expected epochs
    memory_budget_mib: float
    reasons: list[str] = field(default_factory=list)  # one line per decision
    mode: str = "auto"  # the config's `plan`: "auto" applies the overrides, "off" does not
    overrides: dict[str, Any] = field(default_factory=dict)  # field -> planned value
    memory_terms: dict[str, float] = field(default_factory=dict)  # MiB per term
    fits: bool = True  # the estimate is within the budget
    time_budget_seconds: float | None = None
    flops_per_second: float = 0.0  # the plan-time matmul rate
    size: CatalogueSize | None = None


# ----------------------------------------------------------------------------- memory
def text_tokens(size: CatalogueSize, config: RecommenderConfig) -> int:
    """Tokens of an encoder batch's longest text (padded to it, cut at max_length)."""
    if size.text_tokens is None:
        return config.encoder_max_length
    return max(1, min(size.text_tokens, config.encoder_max_length))


def _positions(size: CatalogueSize) -> float:
    """Training positions: each kept user's events but the two held out, less one."""
    return float(max(size.events - 3 * size.users, 0))


def _windows(size: CatalogueSize, max_len: int) -> float:
    """Training windows of ``max_len`` (each user's oldest one is partly filled)."""
    positions = _positions(size)
    return positions / max_len + size.users / 2 if positions else 0.0


def _fill(size: CatalogueSize, max_len: int) -> float:
    """Share of window positions that are real (not padding)."""
    windows = _windows(size, max_len)
    return min(1.0, _positions(size) / (windows * max_len)) if windows else 1.0


def memory_terms(size: CatalogueSize, config: RecommenderConfig, negatives: int, batch: int,
                 max_len: int) -> dict[str, float]:
    """Each term of the memory model, in MiB, and ``peak``: what the run holds throughout plus
    the largest of its phases (encoder fine-tuning, embedding the items, training ours)."""
    rows = size.items + 1
    hidden, layers = config.hidden_size, config.num_layers
    columns = rows if negatives <= 0 else negatives + 1
    tokens = batch * max_len
    layers_enc = 6 if config.encoder_num_layers is None else config.encoder_num_layers
    scale = (config.encoder_batch_pairs / 96) * text_tokens(size, config) * (layers_enc / 6)
    terms = {
        "process": PROCESS_OVERHEAD_MIB,
        "encoder_weights": ENCODER_WEIGHTS_MIB,
        "snapshot": (size.items * SNAPSHOT_ITEM_BYTES + size.events * EVENT_BYTES) / MIB,
        "encoder_finetune": (ENCODER_FINETUNE_MIB_PER_TOKEN * scale
                             if config.encoder_steps > 0 else 0.0),
        "text_table": rows * TEXT_DIM * 4 / MIB,
        "item_tables": rows * hidden * 4 * ITEM_ROW_COPIES / MIB,
        "top_k": max(config.average_top_k, 1) * rows * hidden * 4 / MIB,
        "averaging": (max(config.average_top_k, 1) + 1) * rows * hidden * 4 / MIB,
        "windows": _windows(size, max_len) * max_len * WINDOW_BYTES / MIB,
        "logits": tokens * _fill(size, max_len) * columns * LOGIT_BYTES / MIB,
        "activations": (tokens * layers * (4 * hidden + config.ff_size) * TOKEN_BYTES
                        + batch * config.num_heads * max_len**2 * layers * ATTENTION_BYTES
                        ) / MIB + STEP_FIXED_MIB,
        "evaluation": min(size.users, block_rows(rows)) * rows * EVAL_BYTES_PER_CELL / MIB,
    }
    held = terms["process"] + terms["encoder_weights"] + terms["snapshot"]
    training = (terms["text_table"] + terms["item_tables"] + terms["top_k"] + terms["windows"]
                + max(terms["logits"] + terms["activations"], terms["evaluation"],
                      terms["averaging"]))
    terms["peak"] = held + max(terms["encoder_finetune"], 2 * terms["text_table"], training)
    return terms


# ----------------------------------------------------------------------------- time
def measure_flop_rate(hidden: int, device: torch.device | None = None,
                      seconds: float = 0.2) -> float:
    """FLOP/s of a matmul shaped like the output layer ([rows, hidden] x [hidden, columns]),
    timed for about ``seconds`` on ``device`` (the CPU by default)."""
    device = device or torch.device("cpu")
    rows, columns = BENCH_SHAPE
    a = torch.randn(rows, hidden, device=device)
    b = torch.randn(hidden, columns, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    a @ b  # warm-up (kernel selection, first-touch pages)
    sync()
    runs, started = 0, time.perf_counter()
    while True:
        a @ b
        runs += 1
        sync()
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return 2.0 * rows * hidden * columns * runs / elapsed


def token_flops(hidden: int, ff_size: int, layers: int, max_len: int) -> float:
    """Forward FLOPs of one window position through the blocks: qkv and output projections
    (8 h^2), the feed-forward (4 h ff) and attention over the window (4 L h)."""
    return layers * (8 * hidden**2 + 4 * hidden * ff_size + 4 * max_len * hidden)


def step_seconds(size: CatalogueSize, config: RecommenderConfig, negatives: int, batch: int,
                 max_len: int, rate: float, text: bool = True) -> float:
    """One training step: forward and backward (3x the forward) of the windows and the loss,
    plus, with item text, projecting the text of the rows the step reads (forward and weight
    gradient), ``projected_rows``."""
    rows = size.items + 1
    columns = rows if negatives <= 0 else negatives + 1
    hidden = config.hidden_size
    positions = batch * max_len * _fill(size, max_len)
    flops = 3 * (batch * max_len * token_flops(hidden, config.ff_size, config.num_layers,
                                               max_len) + positions * columns * 2 * hidden)
    seconds = flops / (rate * STEP_EFFICIENCY)
    if text and config.use_text:
        projected = projected_rows(rows, negatives, batch * max_len, positions)
        seconds += 4 * projected * TEXT_DIM * hidden / (rate * TABLE_EFFICIENCY)
    return seconds


def projected_rows(rows: int, negatives: int, inputs: float, positions: float) -> float:
    """Item rows whose text a step projects (``SequenceInterestModel.item_rows``): the inputs'
    rows, and the targets' and negatives' (every row with the full softmax); each part is
    the whole table once it would need as many rows."""
    outputs = rows if negatives <= 0 else min(rows, positions + negatives)
    return min(rows, inputs) + outputs


def epoch_seconds(size: CatalogueSize, config: RecommenderConfig, negatives: int, batch: int,
                  max_len: int, rate: float, text: bool = True) -> float:
    """An epoch: its steps, then scoring and ranking every user's validation target."""
    rows, hidden = size.items + 1, config.hidden_size
    steps = math.ceil(_windows(size, max_len) / batch)
    validation = (size.users * (max_len * token_flops(hidden, config.ff_size, config.num_layers,
                                                      max_len) + rows * 2 * hidden)
                  / (rate * STEP_EFFICIENCY) + size.users * rows * EVAL_CELL_FLOPS / rate)
    if text and config.use_text:
        validation += 2 * rows * TEXT_DIM * hidden / (rate * TABLE_EFFICIENCY)
    return steps * step_seconds(size, config, negatives, batch, max_len, rate, text) + validation


def expected_epochs(config: RecommenderConfig, baseline: bool = False) -> int:
    """Epochs until patience (or the epoch cap) is expected to stop a model."""
    cap = config.max_epochs
    if baseline and config.baseline_max_epochs is not None:
        cap = config.baseline_max_epochs
    return max(1, min(cap, EPOCHS_PER_PATIENCE * config.patience))


def total_seconds(size: CatalogueSize, config: RecommenderConfig, negatives: int, batch: int,
                  max_len: int, rate: float) -> float:
    """Encoder fine-tuning and embedding, ours and sasrec_id at their expected epochs."""
    tokens = text_tokens(size, config)
    layers = (6 if config.encoder_num_layers is None else config.encoder_num_layers) / 6
    encoder = (config.encoder_steps * ENCODER_STEP_FLOPS_PER_TOKEN * tokens * layers
               * config.encoder_batch_pairs / 96
               + size.items * EMBED_ITEM_FLOPS_PER_TOKEN * tokens * layers) / rate
    ours = expected_epochs(config) * epoch_seconds(size, config, negatives, batch, max_len, rate)
    baseline = (expected_epochs(config, baseline=True)
                * epoch_seconds(size, config, negatives, batch, max_len, rate, text=False)
                if config.train_baseline else 0.0)
    return encoder + ours + baseline


# ----------------------------------------------------------------------------- plan
def plan_training(summary: CatalogueSize, config: RecommenderConfig, memory_budget_mib: float,
                  time_budget_seconds: float | None = None,
                  flops_per_second: float | None = None,
                  shares: StageShares = DEFAULT_SHARES) -> TrainingPlan:
    """The plan for ``config`` on a catalogue of ``summary``'s size (module docstring: the
    rules). ``flops_per_second``: the matmul rate (measured here on the CPU when None);
    ``shares``: where the time budget's stages stop (training.budget)."""
    rate = flops_per_second or measure_flop_rate(config.hidden_size)
    auto = config.plan == "auto"
    negatives, batch, max_len = config.loss_negatives, config.batch_size, config.max_len
    reasons: list[str] = []

    def peak(k: int, b: int, length: int) -> dict[str, float]:
        return memory_terms(summary, config, k, b, length)

    if negatives <= 0:
        logits = peak(0, batch, max_len)["logits"]
        if summary.items > FULL_SOFTMAX_MAX_ITEMS:
            negatives = SAMPLED_NEGATIVES
            reasons.append(f"loss: {SAMPLED_NEGATIVES} sampled negatives, the catalogue has "
                           f"{summary.items:,} items (full softmax up to "
                           f"{FULL_SOFTMAX_MAX_ITEMS:,})")
        elif logits > LOGITS_SHARE * memory_budget_mib:
            negatives = SAMPLED_NEGATIVES
            reasons.append(f"loss: {SAMPLED_NEGATIVES} sampled negatives, the full softmax's "
                           f"logits would take {logits:,.0f} MiB, over "
                           f"{LOGITS_SHARE:.0%} of the budget")
        elif time_budget_seconds is not None:
            share = shares.ours * time_budget_seconds
            full = epoch_seconds(summary, config, 0, batch, max_len, rate)
            sampled = epoch_seconds(summary, config, SAMPLED_NEGATIVES, batch, max_len, rate)
            if full * MIN_EPOCHS_IN_BUDGET > share and sampled * 2 <= full:
                negatives = SAMPLED_NEGATIVES
                reasons.append(f"loss: {SAMPLED_NEGATIVES} sampled negatives, a full-softmax "
                               f"epoch (~{full:,.0f} s) leaves fewer than "
                               f"{MIN_EPOCHS_IN_BUDGET} epochs in ours's {share:,.0f} s of the "
                               f"time budget; sampled: ~{sampled:,.0f} s")
        if negatives == 0:
            reasons.append(f"loss: full softmax over {summary.items + 1:,} columns (logits "
                           f"~{logits:,.0f} MiB)")
    else:
        reasons.append(f"loss: {negatives} sampled negatives, as configured")

    # Halve the batch, then the history, while over the budget and while it lowers the
    # estimate (past that point the catalogue's tables, not the steps, set the peak).
    def shrink(value: int, floor: int, estimate: Callable[[int], float], name: str) -> int:
        while value > floor:
            now, smaller = estimate(value), max(floor, value // 2)
            if now <= memory_budget_mib or estimate(smaller) >= now - 1:
                break
            reasons.append(f"{name} {value} -> {smaller}: estimated peak {now:,.0f} MiB over "
                           "the budget")
            value = smaller
        return value

    batch = shrink(batch, MIN_BATCH, lambda b: peak(negatives, b, max_len)["peak"], "batch")
    max_len = shrink(max_len, MIN_MAX_LEN, lambda n: peak(negatives, batch, n)["peak"],
                     "history")
    terms = peak(negatives, batch, max_len)
    fits = terms["peak"] <= memory_budget_mib
    if not fits:
        big = sorted(((v, k) for k, v in terms.items() if k != "peak"), reverse=True)[:3]
        reasons.append(f"does not fit: at batch {batch} and history {max_len} the estimate is "
                       f"{terms['peak']:,.0f} MiB (largest terms: "
                       + ", ".join(f"{k} {v:,.0f}" for v, k in big)
                       + "); raise --memory-gb")
    learning_rate = config.learning_rate
    if batch != config.batch_size:
        learning_rate = config.learning_rate * math.sqrt(batch / config.batch_size)
        reasons.append(f"learning rate {config.learning_rate:g} -> {learning_rate:.3g}: "
                       f"square-root rule for batch {config.batch_size} -> {batch}")
    planned = {"loss_negatives": negatives, "batch_size": batch, "max_len": max_len,
               "learning_rate": learning_rate}
    overrides = {key: value for key, value in planned.items()
                 if value != getattr(config, key)}
    if not auto:
        # "off": the config trains as written; the estimates are of that.
        negatives, batch, max_len = config.loss_negatives, config.batch_size, config.max_len
        learning_rate = config.learning_rate
        terms = peak(negatives, batch, max_len)
        fits = terms["peak"] <= memory_budget_mib
    epoch = epoch_seconds(summary, config, negatives, batch, max_len, rate)
    total = total_seconds(summary, config, negatives, batch, max_len, rate)
    step = step_seconds(summary, config, negatives, batch, max_len, rate)
    table = step - step_seconds(summary, config, negatives, batch, max_len, rate, text=False)
    if table > step / 2:
        reasons.append(f"time: projecting the items' text takes {table:.2f} s of a "
                       f"{step:.2f} s step: the catalogue, not the batch, sets a step's cost")
    if time_budget_seconds is not None and total > time_budget_seconds * shares.sasrec_id:
        reasons.append(f"time: the estimate ({duration(total)}) is past the sequence "
                       f"models' {shares.sasrec_id:.0%} of the time budget; they stop there "
                       "with their best validated weights")
    return TrainingPlan(
        loss_negatives=negatives, batch_size=batch, max_len=max_len,
        learning_rate=learning_rate, estimated_peak_mib=terms["peak"],
        estimated_epoch_seconds=epoch, estimated_total_seconds=total,
        memory_budget_mib=memory_budget_mib, reasons=reasons, mode=config.plan,
        overrides=overrides if auto else {}, memory_terms=terms, fits=fits,
        time_budget_seconds=time_budget_seconds, flops_per_second=rate, size=summary)


def duration(seconds: float) -> str:
    """Seconds in words: "42 s", "12.5 min", "3.2 h"."""
    if seconds < 120:
        return f"{seconds:,.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:,.1f} min"
    return f"{seconds / 3600:,.1f} h"


def apply_plan(config: RecommenderConfig, plan: TrainingPlan) -> RecommenderConfig:
    """``config`` with the plan's overrides (none when the plan is off)."""
    return dataclasses.replace(config, **plan.overrides) if plan.overrides else config


def describe_plan(plan: TrainingPlan, config: RecommenderConfig) -> list[str]:
    """The plan in words, one line each, for the run log (``config``: as written)."""
    size = plan.size
    loss = ("full softmax" if plan.loss_negatives <= 0
            else f"sampled softmax, {plan.loss_negatives} negatives")
    lines = [f"training plan ({plan.mode}), memory budget {plan.memory_budget_mib:,.0f} MiB"
             + ("" if plan.time_budget_seconds is None
                else f", time budget {duration(plan.time_budget_seconds)}")]
    if size is not None:
        lines.append(f"  catalogue: {size.items:,} items, {size.users:,} users, "
                     f"{size.events:,} events, repeat share {size.repeat_share:.2f}")
    lines.append(f"  loss: {loss}; batch {plan.batch_size}, history {plan.max_len}, "
                 f"learning rate {plan.learning_rate:.3g}")
    big = sorted(((v, k) for k, v in plan.memory_terms.items() if k != "peak"), reverse=True)
    lines.append(f"  estimated peak memory {plan.estimated_peak_mib:,.0f} MiB "
                 f"({'within' if plan.fits else 'OVER'} the budget; largest terms: "
                 + ", ".join(f"{k} {v:,.0f}" for v, k in big[:3]) + ")")
    lines.append(f"  estimated time: {duration(plan.estimated_epoch_seconds)} an epoch of ours, "
                 f"{duration(plan.estimated_total_seconds)} for the encoder and "
                 f"{expected_epochs(config)} epochs of the sequence models "
                 f"(matmul rate {plan.flops_per_second / 1e9:,.1f} GFLOP/s; the stages after "
                 "them are not estimated)")
    lines += [f"  - {reason}" for reason in plan.reasons]
    for key, value in plan.overrides.items():
        lines.append(f"  override: {key} {getattr(config, key)} -> {value}")
    if plan.mode != "auto":
        lines.append("  plan is off: the config's values are used as written")
    return lines


def plan_report(plan: TrainingPlan) -> dict[str, Any]:
    """``quality["plan"]``: the plan's settings, estimates and reasons (JSON-ready)."""
    return {"mode": plan.mode, "loss_negatives": plan.loss_negatives,
            "batch_size": plan.batch_size, "max_len": plan.max_len,
            "learning_rate": plan.learning_rate,
            "estimated_peak_mib": round(plan.estimated_peak_mib, 1),
            "estimated_epoch_seconds": round(plan.estimated_epoch_seconds, 2),
            "estimated_total_seconds": round(plan.estimated_total_seconds, 1),
            "memory_budget_mib": round(plan.memory_budget_mib, 1), "fits": plan.fits,
            "overrides": dict(plan.overrides), "reasons": list(plan.reasons),
            "memory_terms_mib": {k: round(v, 1) for k, v in plan.memory_terms.items()},
            "flops_per_second": round(plan.flops_per_second),
            **({"catalogue": dataclasses.asdict(plan.size)} if plan.size else {})}


def plan_tags(quality: Mapping[str, Any]) -> dict[str, str]:
    """MLflow tags (``plan_*``) of the plan recorded in a quality report."""
    report = quality.get("plan")
    if not report:
        return {}
    overrides = ",".join(f"{k}={v}" for k, v in report["overrides"].items()) or "none"
    return {"plan_mode": str(report["mode"]),
            "plan_loss_negatives": str(report["loss_negatives"]),
            "plan_batch_size": str(report["batch_size"]), "plan_max_len": str(report["max_len"]),
            "plan_learning_rate": f"{report['learning_rate']:.6g}",
            "plan_estimated_peak_mib": f"{report['estimated_peak_mib']:.0f}",
            "plan_memory_budget_mib": f"{report['memory_budget_mib']:.0f}",
            "plan_estimated_epoch_seconds": f"{report['estimated_epoch_seconds']:.1f}",
            "plan_estimated_total_seconds": f"{report['estimated_total_seconds']:.0f}",
            "plan_overrides": overrides[:5000]}


def memory_report(peak_rss_mib: float, plan: TrainingPlan,
                  log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``quality["memory"]``: the measured peak next to the budget (and the estimate); ``log``
    gets a warning when the peak went over the budget."""
    over = peak_rss_mib > plan.memory_budget_mib
    if over and log is not None:
        log(f"WARNING: peak RSS {peak_rss_mib:,.0f} MiB exceeded the memory budget "
            f"{plan.memory_budget_mib:,.0f} MiB (the plan estimated "
            f"{plan.estimated_peak_mib:,.0f} MiB); raise --memory-gb or shrink the settings")
    return {"peak_rss_mib": round(peak_rss_mib, 1),
            "memory_budget_mib": round(plan.memory_budget_mib, 1),
            "estimated_peak_mib": round(plan.estimated_peak_mib, 1),
            "exceeded": over}
