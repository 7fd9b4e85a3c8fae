"""torch's threads for a training process: the cores it may use (app/core/cpus.py), never more.

Each training command calls `use_usable_cores` first: torch's default is one thread per core
of the machine, which oversubscribes the CPU under an affinity mask or a container quota,
and oversubscribed intra-op threads spin waiting for each other instead of working.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import torch
from threadpoolctl import threadpool_limits

from app.core.cpus import cpu_budget, torch_threads_for


def use_usable_cores(announce: Callable[[str], None] | None = print) -> int:
    """Set torch's intra-op threads (and its inter-op threads, while torch still allows it) to
    the usable cores, or to OMP_NUM_THREADS when that is set, capped at them, and numpy's BLAS
    to one thread; `announce` is told the number and why. Returns the number."""
    budget = cpu_budget()
    requested = omp_threads()
    threads = torch_threads_for(1, requested, budget.usable)
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):
        # torch refuses once inter-op work has run or the number was set before; its
        # default pool is then kept, which only matters for inter-op parallel work.
        torch.set_num_interop_threads(threads)
    # numpy's BLAS (OpenBLAS) keeps its own pool, whose idle workers spin for a while after
    # each call: between torch's steps they compete with torch's threads for the same cores.
    # The heavy arithmetic is torch's; numpy's matrices in training are small.
    threadpool_limits(limits=1, user_api="blas")
    if announce is not None:
        why = budget.describe() if requested is None else (
            f"OMP_NUM_THREADS={requested}{', capped' if threads < requested else ''}; "
            f"{budget.describe()}")
        announce(f"torch threads: {threads} ({why})")
    return threads


def omp_threads() -> int | None:
    """OMP_NUM_THREADS as a positive number: the documented way to ask for fewer threads."""
    try:
        value = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return value if value >= 1 else None
