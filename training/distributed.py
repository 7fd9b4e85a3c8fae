"""Data-parallel training of the sequence model on Ray Train (`python -m training train --ray
--workers N`): a `TorchTrainer` runs `train_sequence_model` on N workers, each one rank of
PyTorch DDP (gloo on CPUs, NCCL on GPUs).

Every rank draws the same window order and takes its share of each batch
(`train_epoch(shard=...)`); DDP averages the gradients, so a step sees what one process's step
on the same batch would, and the number of steps per epoch is unchanged: the metrics match the
single-process run within seed noise. Every rank validates the same synchronised weights and so
stops at the same epoch; rank 0 returns the best weights and the history as a checkpoint.

`ray` is imported inside the functions (the optional `ray` extra).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from app.ml.sequence import SequenceInterestModel
from training.data.sequences import LeaveOneOutSplit
from training.sequence_trainer import (
    SequenceTrainConfig,
    SequenceTrainResult,
    train_sequence_model,
    window_loss,
)

STATE_FILE = "model.pt"
RESULT_FILE = "result.json"


class WindowLoss(torch.nn.Module):
    """The training loss as a module's forward pass: what DDP wraps, so every parameter's
    gradient (item_logits included) is reduced in the backward of that call."""

    def __init__(self, model: SequenceInterestModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, items: torch.Tensor, times: torch.Tensor, targets: torch.Tensor,
                negatives: int = 0, generator: torch.Generator | None = None,
                target_times: torch.Tensor | None = None) -> torch.Tensor:
        # the same loss as one process: sampled softmax when the config asks for it (every
        # rank draws the same negatives: the same generator, seeded alike, drawing alike)
        return window_loss(self.model, items, times, targets, negatives, generator,
                           target_times)


def _train_worker(loop_config: dict[str, Any]) -> None:
    """One rank (runs in a Ray Train worker process)."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    model: SequenceInterestModel = loop_config["model"]
    device = ray.train.torch.get_device()
    forward = ray.train.torch.prepare_model(
        WindowLoss(model), parallel_strategy_kwargs={"find_unused_parameters": True})
    result = train_sequence_model(model, loop_config["split"], loop_config["config"], device,
                                  loop_config["seed"], progress=False, name=loop_config["name"],
                                  forward=forward, shard=(rank, world))
    metrics = {"best_val": result.best_val, "best_epoch": result.best_epoch}
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save({k: v.detach().cpu() for k, v in result.model.state_dict().items()},
                   Path(folder) / STATE_FILE)
        (Path(folder) / RESULT_FILE).write_text(json.dumps({
            "best_epoch": result.best_epoch, "best_val": result.best_val,
            "averaged": result.averaged, "history": result.history, "world": world,
            "precision": result.precision, "compiled": result.compiled,
            "speed_notes": result.speed_notes}))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def train_sequence_model_ray(model: SequenceInterestModel, split: LeaveOneOutSplit,
                             config: SequenceTrainConfig, device: torch.device, seed: int,
                             progress: bool = True, name: str = "ours", *, workers: int = 2,
                             address: str | None = None) -> SequenceTrainResult:
    """`train_sequence_model` on `workers` Ray Train workers (DDP); GPU workers when `device`
    is CUDA. Joins the cluster at `address`, else starts a local one of `workers` CPUs."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from app.services.drift_scan_ray import init_ray

    start = time.perf_counter()
    init_ray(address, num_cpus=max(2, workers))
    with tempfile.TemporaryDirectory(prefix="driftrec-ray-train-") as storage:
        trainer = TorchTrainer(
            _train_worker,
            train_loop_config={"model": model.cpu(), "split": split, "config": config,
                               "seed": seed, "name": name},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=device.type == "cuda"),
            run_config=RunConfig(storage_path=storage, name=f"sequence-{name}"),
        )
        outcome = trainer.fit()
        if outcome.checkpoint is None:
            raise RuntimeError(f"Ray Train returned no model: {outcome.error}")
        with outcome.checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, map_location="cpu")
            summary = json.loads((Path(folder) / RESULT_FILE).read_text())
    model.load_state_dict(state)
    model.to(device).eval()
    return SequenceTrainResult(model=model, best_epoch=summary["best_epoch"],
                               best_val=summary["best_val"], averaged=summary["averaged"],
                               history=summary["history"],
                               seconds=time.perf_counter() - start,
                               precision=summary["precision"], compiled=summary["compiled"],
                               speed_notes=summary["speed_notes"])
