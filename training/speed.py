"""Opt-in speed options of the sequence model's training step, both off by default.

``bf16``: the forward pass and loss of a training step under bf16 autocast. "off" (default)
trains in fp32 on the CPU; "auto" turns it on only where the CPU multiplies bf16 matrices in
hardware (app.core.cpus.bf16_matmul_support) and says why when it does not; "on" insists and
fails when the CPU cannot. The optimizer and the master weights stay fp32, and validation,
evaluation and serving run in fp32 whatever this says, so the served answers are the
evaluated ones. CUDA already trains, evaluates and serves under bf16 autocast
(app.ml.device.autocast_context); that is unchanged, and "on" there checks that the GPU
supports bf16.

``compile``: the model's forward pass in training through ``torch.compile`` (evaluation and
serving stay eager); a compile that fails falls back to the eager forward with its reason.

Whether either pays is for a measured ablation to decide; the training history records which
were in effect.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from app.core.cpus import bf16_matmul_support, read_cpuinfo
from app.ml.device import autocast_context

BF16_MODES = ("off", "auto", "on")
# Both options' defaults: a setting at them is the same run as one from before they existed.
SPEED_DEFAULTS: dict[str, object] = {"bf16": "off", "compile": False}
# Inductor, torch.compile's default; tests swap in a backend that compiles in milliseconds.
COMPILE_BACKEND = "inductor"


class Bf16Unsupported(RuntimeError):
    """``bf16: on`` on a device without bf16 matrix arithmetic."""


@dataclass(frozen=True)
class Precision:
    """The arithmetic of the training step's forward pass and loss, and why."""

    bf16: bool
    reason: str
    device_type: str = "cpu"

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def autocast(self) -> AbstractContextManager[object]:
        """The context of one training step's forward pass and loss."""
        if self.device_type == "cuda":
            return autocast_context(torch.device("cuda"))
        if self.bf16:
            return torch.autocast(device_type=self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def _check_mode(mode: str) -> None:
    if mode not in BF16_MODES:
        raise ValueError(f"bf16 must be one of {list(BF16_MODES)}, got {mode!r}")


def resolve_cpu_bf16(mode: str, cpuinfo: str | None) -> Precision:
    """The CPU training step's precision for a ``bf16`` setting, given /proc/cpuinfo's text
    (None: unreadable). "on" without hardware support raises Bf16Unsupported."""
    _check_mode(mode)
    if mode == "off":
        return Precision(False, "bf16 is off")
    supported, why = bf16_matmul_support(cpuinfo)
    if supported:
        return Precision(True, f"bf16 autocast: {why}")
    if mode == "on":
        raise Bf16Unsupported(
            f"bf16 is 'on' but {why}: its bf16 matmuls would be emulated, slower than fp32. "
            f"Use bf16: auto (fp32 on such a CPU) or bf16: off")
    return Precision(False, f"bf16 is 'auto' but {why}: training in fp32")


def resolve_cuda_bf16(mode: str, supported: bool) -> Precision:
    """CUDA keeps its bf16 autocast whatever the mode; "on" checks `supported`
    (torch.cuda.is_bf16_supported())."""
    _check_mode(mode)
    if mode == "on" and not supported:
        raise Bf16Unsupported("bf16 is 'on' but this GPU does not support bf16")
    return Precision(True, "CUDA trains under bf16 autocast (the device's default)", "cuda")


def training_precision(mode: str, device: torch.device) -> Precision:
    """The training step's precision on `device` for a ``bf16`` setting."""
    if device.type == "cuda":
        return resolve_cuda_bf16(mode, mode != "on" or torch.cuda.is_bf16_supported())
    return resolve_cpu_bf16(mode, None if mode == "off" else read_cpuinfo())


Encode = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


class CompiledForward:
    """A model's forward pass through torch.compile, for training steps only (the model
    itself, used by evaluation and serving, stays eager). At the first failure, at compile
    time or at a recompile for a new shape, it reports why and runs eagerly from then on."""

    def __init__(self, model: torch.nn.Module, report: Callable[[str], None] | None = None,
                 backend: str | None = None) -> None:
        self.model = model
        self.report = report
        self.failure: str | None = None
        self.compiled: Encode | None = None
        try:
            self.compiled = torch.compile(model, backend=backend or COMPILE_BACKEND)
        except Exception as error:  # e.g. no compiler toolchain, an unsupported platform
            self._fall_back(error)

    @property
    def active(self) -> bool:
        """Whether steps still run compiled."""
        return self.compiled is not None

    def _fall_back(self, error: Exception) -> None:
        self.compiled = None
        first_line = (str(error).strip().splitlines() or [""])[0]
        self.failure = f"{type(error).__name__}: {first_line}"
        message = f"torch.compile failed ({self.failure}); training with the eager forward"
        if self.report is not None:
            self.report(message)
        else:
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def __call__(self, items: torch.Tensor, times: torch.Tensor,
                 query_times: torch.Tensor | None = None) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(items, times, query_times)
            except Exception as error:
                # A real error of the model fails again below; a compiler's does not.
                self._fall_back(error)
        return self.model(items, times, query_times)


def speed_tags(step: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """MLflow tags (``step_<model>_precision``, ``step_<model>_compiled``) of the training
    step options in effect, per model, as a quality report's ``training_step`` holds them."""
    tags = {}
    for model, state in step.items():
        tags[f"step_{model}_precision"] = str(state["precision"])
        tags[f"step_{model}_compiled"] = str(bool(state["compiled"])).lower()
    return tags
