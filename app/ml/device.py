"""Device selection and mixed precision, shared by training and serving."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch


def resolve_device(preference: str = "auto") -> torch.device:
    """Return the torch device to use.

    ``auto`` picks CUDA when it is available and the CPU otherwise; ``cuda`` (or ``cuda:N``)
    raises if CUDA is absent rather than silently training on the CPU; ``cpu`` is always allowed.
    """
    preference = preference.strip().lower()
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {preference!r} requested but CUDA is not available")
        return torch.device(preference)
    if preference == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device preference {preference!r} (use auto, cpu or cuda[:N])")


def autocast_context(device: torch.device) -> AbstractContextManager[object]:
    """bf16 autocast on CUDA; a null context on the CPU (CPU bf16 is slower than fp32 here)."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
