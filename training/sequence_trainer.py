"""Trainer for SequenceInterestModel: every-position cross-entropy (full softmax over the
catalogue, or over ``loss_negatives`` uniformly sampled items shared by a batch), Adam(W),
early stopping on validation NDCG@10, best-validation checkpoint (optionally the average of
the top-k validation checkpoints, kept only if it scores better on validation).

With ``checkpoint`` set, the whole training state (weights, optimiser, top-k states, history,
random generators) is written there after every epoch, and a run that finds a checkpoint of
the same setting resumes after its last epoch (a finished run is not trained again).

With a ``deadline`` (training.budget), an epoch ends early at the first batch past it, and
training stops after that epoch's validation with the best validated weights so far
(``stopped_by_deadline``); its checkpoint is not marked finished, so a run interrupted after
that goes on from there when started again.

``bf16`` and ``compile`` (training.speed, both off by default) speed up the training step
only; the history and the result record which were in effect."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from app.ml.sequence import SequenceInterestModel
from training.budget import Deadline
from training.data.sequences import (
    LeaveOneOutSplit,
    TrainingWindows,
    shuffle_ties,
    training_windows,
)
from training.evaluate import evaluate_model
from training.speed import (
    SPEED_DEFAULTS,
    CompiledForward,
    Encode,
    Precision,
    training_precision,
)

SELECT_METRIC = "ndcg@10"
BIAS_FIELDS = ("time_bias", "position_bias", "bias_buckets")  # SequenceModelConfig, later
StateDict = dict[str, torch.Tensor]


@dataclass
class SequenceTrainConfig:
    """Optimisation settings of one sequence-model run."""

    learning_rate: float = 1e-3
    weight_decay: float = 0.0  # decoupled (AdamW); 0 = plain Adam as in RecBole
    batch_size: int = 128  # windows per step
    max_epochs: int = 200
    patience: int = 10  # epochs without a better validation NDCG@10 before stopping
    average_top_k: int = 1  # >1: also try the mean weights of the k best validation epochs
    grad_clip: float = 5.0  # max gradient norm (0 = off)
    shuffle_ties: bool = True  # re-draw the order of same-second training events every epoch
    item_dropout: float = 0.0  # probability of hiding an input item (its time stays visible)
    loss_negatives: int = 0  # 0 = softmax over the whole catalogue; K > 0 = over the target
    # and K items drawn uniformly (shared by the batch; a draw equal to the target is masked)
    bf16: str = "off"  # the CPU training step under bf16 autocast: "off", "auto", "on"
    compile: bool = False  # the training forward through torch.compile (training.speed)


@dataclass
class SequenceTrainResult:
    model: SequenceInterestModel  # best-validation weights, eval mode
    best_epoch: int
    best_val: float  # validation NDCG@10 of the returned weights
    averaged: bool  # True when the top-k average was kept
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    stopped_by_deadline: bool = False  # the time budget ended training before patience did
    precision: str = "fp32"  # the training step's forward and loss: "fp32" or "bf16"
    compiled: bool = False  # the training forward ran compiled to the end
    speed_notes: list[str] = field(default_factory=list)  # why, for each of the two

    @property
    def slow_epochs(self) -> int:
        """Epochs flagged by `slow_epoch` (history rows with ``"slow": True``)."""
        return sum(1 for row in self.history if row.get("slow"))


SLOW_EPOCH_FACTOR = 2.0
BASELINE_EPOCHS = 3


def slow_epoch(seconds_so_far: list[float], factor: float = SLOW_EPOCH_FACTOR,
               min_seconds: float = 1.0) -> float | None:
    """The last epoch's time as a multiple of the median of the first (up to 3) epochs before
    it, when that is above `factor`; else None (also while there is no earlier epoch, and
    for an epoch under `min_seconds`, whose time is mostly timer and scheduling noise).

    The same epochs on the same data take about the same time, so a much slower one means
    the process lost CPU time: usually another process competing for the cores."""
    if len(seconds_so_far) < 2 or seconds_so_far[-1] < min_seconds:
        return None
    baseline = float(np.median(seconds_so_far[: min(BASELINE_EPOCHS, len(seconds_so_far) - 1)]))
    if baseline <= 0:
        return None
    ratio = seconds_so_far[-1] / baseline
    return ratio if ratio > factor else None


def _warn_slow(name: str, epoch: int, seconds: list[float], ratio: float, log: Any) -> None:
    baseline = seconds[-1] / ratio
    message = (f"{name} epoch {epoch} took {seconds[-1]:.0f} s, {ratio:.1f}x the first epochs' "
               f"{baseline:.0f} s: another process is probably competing for the CPU (torch's "
               f"threads spin when oversubscribed; run training alone)")
    if log is not None:
        log(message)
    else:
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def window_loss(model: SequenceInterestModel, items: torch.Tensor, times: torch.Tensor,
                targets: torch.Tensor, negatives: int = 0,
                generator: torch.Generator | None = None,
                target_times: torch.Tensor | None = None,
                encode: Encode | None = None) -> torch.Tensor:
    """Mean cross-entropy over all non-pad positions: inputs [B, L] -> scalar.

    negatives = 0: full softmax over the catalogue. negatives = K > 0: sampled softmax over
    the target and K items drawn uniformly from 1..N (one draw per batch, shared by every
    position; a draw that equals a position's target is masked out there).
    target_times [B, L]: each target's timestamp, the query time of a model whose time bias
    uses the request time (ignored by others).
    encode: the model's forward to use (a compiled one in training); the model's own if None."""
    real = targets > 0
    query_times = target_times if model.uses_request_time else None
    # [P, H]: scoring pads would waste ~20%
    hidden = (encode or model)(items, times, query_times)[real]
    wanted = targets[real]
    if negatives <= 0:
        logits = model.item_logits(hidden)  # [P, N+1]
        return F.cross_entropy(logits.float(), wanted)
    drawn = torch.randint(1, model.n_items + 1, (negatives,), generator=generator)
    drawn = drawn.to(hidden.device)
    positive = (hidden * model.item_rows(wanted).to(hidden.dtype)).sum(dim=-1,
                                                                      keepdim=True)  # [P, 1]
    negative = hidden @ model.item_rows(drawn).t().to(hidden.dtype)  # [P, K]
    negative = negative.masked_fill(drawn.unsqueeze(0) == wanted.unsqueeze(1), -torch.inf)
    logits = torch.cat([positive, negative], dim=1).float()
    return F.cross_entropy(logits, torch.zeros(len(wanted), dtype=torch.long,
                                                device=hidden.device))


# A forward pass returning the loss of (items, times, targets, negatives, generator, target
# times): a DDP-wrapped module in the distributed trainer (training/distributed.py);
# window_loss on the model by default. It gets the config's loss, so both paths optimise the
# same objective.
LossForward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Generator,
                        torch.Tensor], torch.Tensor]


def encoded_loss(model: SequenceInterestModel, encode: Encode) -> LossForward:
    """window_loss on `model` with its forward pass replaced by `encode` (a compiled one)."""

    def loss(items: torch.Tensor, times: torch.Tensor, targets: torch.Tensor, negatives: int,
             generator: torch.Generator, target_times: torch.Tensor) -> torch.Tensor:
        return window_loss(model, items, times, targets, negatives, generator, target_times,
                           encode=encode)

    return loss


def train_epoch(model: SequenceInterestModel, windows: TrainingWindows,
                optimizer: torch.optim.Optimizer, config: SequenceTrainConfig,
                device: torch.device, generator: torch.Generator, progress: bool,
                forward: LossForward | None = None, shard: tuple[int, int] = (0, 1),
                deadline: Deadline | None = None,
                precision: Precision | None = None) -> float:
    """One pass over shuffled windows; returns the mean training loss.

    `precision`: the forward pass and loss's autocast (training.speed); the device's default
    (app.ml.device.autocast_context) when None.

    `deadline`: the pass ends early, after the batch that ends past it (an epoch of a large
    catalogue can outlast a whole time budget).

    `shard` = (rank, world size): every rank draws the same order and takes its share of each
    batch, so a step of N data-parallel ranks sees the batch one process would (batches
    smaller than N, at most the last one, are left out there)."""
    model.train()
    rank, world = shard
    order = torch.randperm(len(windows), generator=generator)
    batches = order.split(config.batch_size)
    if world > 1:
        batches = tuple(b.tensor_split(world)[rank] for b in batches if len(b) >= world)
    if precision is None:
        precision = training_precision("off", device)
    total, done = 0.0, 0
    for batch in tqdm(batches, desc="batches", leave=False, disable=not progress):
        if done and deadline is not None and deadline.expired():
            break
        items = windows.items[batch]
        if config.item_dropout > 0:
            # Hidden inputs become the padding row; targets are kept (a cheap augmentation).
            hide = torch.rand(items.shape, generator=generator) < config.item_dropout
            items = items.masked_fill(hide, 0)
        items = items.to(device)
        times = windows.times[batch].to(device)
        targets = windows.targets[batch].to(device)
        target_times = windows.target_times[batch].to(device)
        with precision.autocast():  # the optimizer below keeps fp32 weights and states
            loss = (forward(items, times, targets, config.loss_negatives, generator,
                            target_times)
                    if forward is not None
                    else window_loss(model, items, times, targets, config.loss_negatives,
                                     generator, target_times))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        total += float(loss.detach())
        done += 1
    return total / max(done, 1)


def average_states(states: list[StateDict]) -> StateDict:
    """Element-wise mean of floating-point tensors (others taken from the first state).

    A tensor equal in every state (a constant buffer such as the item text table) is taken
    as it is: its mean could differ in the last bit, and stacking k copies of a catalogue-sized
    table would cost k times its memory."""
    mean = {}
    for key, value in states[0].items():
        if not value.is_floating_point():
            mean[key] = value.clone()
        elif all(state[key] is value or torch.equal(state[key], value) for state in states):
            mean[key] = value
        else:
            mean[key] = torch.stack([state[key] for state in states]).mean(dim=0)
    return mean


def snapshot_state(model: torch.nn.Module, constants: StateDict) -> StateDict:
    """A CPU copy of the model's weights for the top-k list. Buffers (the item text table,
    never trained) are copied once into ``constants`` and shared by every snapshot: at a
    million items each copy of the text table is 1.5 GB."""
    buffers = {name for name, _ in model.named_buffers()}
    state = {}
    for key, value in model.state_dict().items():
        if key in buffers:
            if key not in constants:
                constants[key] = value.detach().cpu()  # a CPU model's buffer itself
            state[key] = constants[key]
        else:
            state[key] = value.detach().cpu().clone()
    return state


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically (a crash mid-write leaves the previous checkpoint)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def _resumable(setting: dict[str, Any]) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: everything but ``max_epochs`` (a run
    may be resumed with a larger epoch budget); a model without attention bias matches a
    checkpoint written before the bias settings existed."""
    train = {k: v for k, v in setting.get("train", {}).items() if k != "max_epochs"}
    model = dict(setting.get("model", {}))
    if model.get("time_bias", "off") == "off" and not model.get("position_bias", False):
        # no attention bias: the same model as one checkpointed before these fields existed
        for key in BIAS_FIELDS:
            model.pop(key, None)
    for key, default in SPEED_DEFAULTS.items():
        if train.get(key, default) == default:  # the same run as one from before they existed
            train.pop(key, None)
    return {**setting, "train": train, "model": model}


def _load_checkpoint(path: Path | None, setting: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint at ``path`` when it was written by a run of the same ``setting``."""
    if path is None or not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state if _resumable(state.get("setting", {})) == _resumable(setting) else None


def train_sequence_model(model: SequenceInterestModel, split: LeaveOneOutSplit,
                         config: SequenceTrainConfig,
                         device: torch.device, seed: int, progress: bool = True,
                         name: str = "ours", checkpoint: Path | None = None,
                         log: Any = None, forward: LossForward | None = None,
                         shard: tuple[int, int] = (0, 1),
                         deadline: Deadline | None = None) -> SequenceTrainResult:
    """Train until validation NDCG@10 has not improved for ``patience`` epochs; return the
    best-validation model and the per-epoch history (loss, validation metrics, seconds).

    checkpoint: file for the training state after each epoch; resumed when it holds a run of
    the same model, config and seed (``log``, if given, is told per epoch and on resume).
    `forward`, `shard`: one rank of data-parallel training (training/distributed.py); every
    rank validates the same synchronised weights, so all stop at the same epoch.
    `deadline`: end the epoch at the first batch past it (at least one batch is trained),
    validate, stop with the best validated weights, and record the stop on the deadline under
    ``name``. One process only: data-parallel ranks would not stop at the same batch.
    `config.bf16`, `config.compile`: see training.speed; ``"on"`` on a CPU without bf16
    matrix instructions raises training.speed.Bf16Unsupported before any training."""
    if deadline is not None and shard[1] > 1:
        raise ValueError("a deadline stops one process, not data-parallel ranks")
    precision = training_precision(config.bf16, device)
    start = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    max_len = model.config.max_len
    fixed_windows = None if config.shuffle_ties else training_windows(split.train, max_len)
    model.to(device)
    notes = [precision.reason]
    compiled: CompiledForward | None = None
    if config.compile and forward is None:
        compiled = CompiledForward(model, log)
        if compiled.active:
            notes.append("the training forward runs through torch.compile")
            forward = encoded_loss(model, compiled)
    elif config.compile:
        notes.append("compile is off: a data-parallel forward is not compiled")
    if log is not None and (config.bf16 != "off" or config.compile):  # silent when unused
        log(f"{name}: training step: {'; '.join(notes)}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    top: list[tuple[float, int, StateDict]] = []  # (val, epoch, cpu state), best first
    history: list[dict[str, Any]] = []
    bad_epochs = 0
    first_epoch, finished, out_of_time = 1, False, False
    constants: StateDict = {}
    setting = {"name": name, "seed": seed, "train": asdict(config),
               "model": asdict(model.config), "n_items": model.n_items,
               "users": len(split.train)}
    if split.basket_holdout:  # another validation: a checkpoint of the other one is not resumed
        setting["basket_holdout"] = True
    resumed = _load_checkpoint(checkpoint, setting)
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        top, history, bad_epochs = resumed["top"], resumed["history"], resumed["bad_epochs"]
        generator.set_state(resumed["generator"])
        rng.bit_generator.state = resumed["numpy_rng"]
        torch.set_rng_state(resumed["torch_rng"])
        first_epoch = resumed["epoch"] + 1
        finished = bad_epochs >= config.patience  # stopped early; else up to max_epochs
        if log is not None:
            log(f"{name}: resumed from {checkpoint} after epoch {resumed['epoch']}"
                f"{' (stopped early)' if finished else ''}")
        resumed = None  # its copies of the weights and optimizer states are loaded: free them
    epochs = tqdm(range(first_epoch, config.max_epochs + 1), desc=name,
                  disable=not progress or finished)
    # this process's epochs only: a resumed run's earlier ones may have run on another load
    epoch_seconds: list[float] = []
    for epoch in [] if finished else epochs:
        epoch_start = time.perf_counter()
        windows = (fixed_windows if fixed_windows is not None
                   else training_windows(shuffle_ties(split.train, rng), max_len))
        loss = train_epoch(model, windows, optimizer, config, device, generator, progress,
                           forward, shard, deadline, precision)
        val = evaluate_model(model, split, device, parts=("val",))["val"]
        score = val[SELECT_METRIC]
        epoch_seconds.append(time.perf_counter() - epoch_start)
        slow = slow_epoch(epoch_seconds)
        history.append({"model": name, "epoch": epoch, "train_loss": loss,
                        **{f"val_{key}": value for key, value in val.items()},
                        "seconds": epoch_seconds[-1], "slow": slow is not None,
                        "precision": precision.name,
                        "compiled": compiled is not None and compiled.active})
        epochs.set_postfix(loss=f"{loss:.3f}", val_ndcg=f"{score:.4f}")
        if log is not None:
            log(f"{name} epoch {epoch}: loss {loss:.4f}, val ndcg@10 {score:.4f}, "
                f"{history[-1]['seconds']:.0f} s")
        if slow is not None:
            _warn_slow(name, epoch, epoch_seconds, slow, log)
        if not top or score > top[0][0]:
            bad_epochs = 0
        else:
            bad_epochs += 1
        state = snapshot_state(model, constants)
        top = sorted([*top, (score, epoch, state)], key=lambda entry: -entry[0])
        top = top[: max(config.average_top_k, 1)]
        finished = bad_epochs >= config.patience or epoch == config.max_epochs
        if checkpoint is not None:
            _save_checkpoint(checkpoint, {
                "setting": setting, "epoch": epoch, "finished": finished,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "top": top,
                "history": history, "bad_epochs": bad_epochs,
                "generator": generator.get_state(), "numpy_rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state()})
        if bad_epochs >= config.patience:
            break
        if deadline is not None and not finished and deadline.expired():
            out_of_time = True
            deadline.record_stop(name)
            if log is not None:
                log(f"{name}: time budget reached after epoch {epoch}; keeping the best "
                    f"validated weights (epoch {top[0][1]})")
            break
    # What only further epochs would need (the optimizer's two states and the gradients, each
    # the size of the weights) goes before the best states are averaged and validated: at a
    # million items that is most of a gigabyte.
    del optimizer
    model.zero_grad(set_to_none=True)
    best_val, best_epoch, best_state = top[0]
    model.load_state_dict(best_state)
    averaged = False
    if config.average_top_k > 1 and len(top) > 1:
        model.load_state_dict(average_states([state for _, _, state in top]))
        mean_val = evaluate_model(model, split, device, parts=("val",))["val"][SELECT_METRIC]
        if mean_val > best_val:
            best_val, averaged = mean_val, True
        else:
            model.load_state_dict(best_state)
    model.eval()
    if compiled is not None and compiled.failure is not None:
        notes.append(f"torch.compile fell back to the eager forward: {compiled.failure}")
    return SequenceTrainResult(model=model, best_epoch=best_epoch, best_val=best_val,
                               averaged=averaged, history=history,
                               seconds=time.perf_counter() - start,
                               stopped_by_deadline=out_of_time, precision=precision.name,
                               compiled=compiled is not None and compiled.active,
                               speed_notes=notes)
