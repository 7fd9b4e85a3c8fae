"""How many cores this process may really use, how many torch threads to give it, and
whether it has bf16 matrix instructions.

`os.cpu_count()` (torch's default thread count) is the machine's cores, not the process's: a
CPU affinity mask (`taskset`, a cpuset) or a cgroup CPU quota (a container's `cpus` or CPU
limit) leaves it fewer. More intra-op threads than usable cores do not run in parallel: they
spin waiting for each other and a step gets several times slower. So training and serving size
torch's threads by `usable_cores()`, the smaller of the affinity mask and the quota.

`bf16_matmul_support` reads whether the CPU multiplies bf16 matrices in hardware, for
training's opt-in bf16 step (training.speed).

Standard library only: `app.core` imports nothing else of the project, and training uses it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
# `python -m app serve --workers N` puts N here for its workers: each splits the cores by it.
WORKERS_ENV = "DRIFTREC_SERVE_WORKERS"
# v1 mounts the cpu controller alone or together with cpuacct, in either order.
_V1_CPU_DIRS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


@dataclass(frozen=True)
class CpuBudget:
    """The cores the affinity mask allows, the cgroup quota in cores (None: no quota), and
    what is usable: the smaller, rounded up, at least 1."""

    affinity: int
    quota: float | None

    @property
    def usable(self) -> int:
        if self.quota is None:
            return self.affinity
        return max(1, min(self.affinity, math.ceil(self.quota)))

    def describe(self) -> str:
        quota = "none" if self.quota is None else f"{self.quota:g} cores"
        return f"{self.usable} usable cores: affinity {self.affinity}, cgroup quota {quota}"


def affinity_cores() -> int:
    """Cores the scheduler may run this process on (all of them where there is no mask API)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        return max(1, os.cpu_count() or 1)


def _own_paths(proc_cgroup: Path) -> dict[str, str]:
    """Controller (``""`` for the v2 unified hierarchy) -> this process's cgroup path."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return {}
    paths: dict[str, str] = {}
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            paths[controller] = parts[2]
    return paths


def _chain(base: Path, own: str | None) -> list[Path]:
    """The process's cgroup directory under `base` and its ancestors up to `base`: a quota set
    on a parent limits its children too. Only `base` when the path is unknown or not mounted
    there (inside a container's cgroup namespace the process sees its own cgroup as the root)."""
    dirs = [base]
    parts = [part for part in (own or "").strip("/").split("/") if part]
    for depth in range(1, len(parts) + 1):
        candidate = base.joinpath(*parts[:depth])
        if not candidate.is_dir():
            break
        dirs.append(candidate)
    return dirs


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2_quota(directory: Path) -> float | None:
    text = _read(directory / "cpu.max")  # "quota period", or "max period": unlimited
    if not text:
        return None
    fields = text.split()
    try:
        period = float(fields[1]) if len(fields) > 1 else 100_000.0
        return None if fields[0] == "max" or period <= 0 else float(fields[0]) / period
    except ValueError:
        return None


def _v1_quota(directory: Path) -> float | None:
    quota, period = (_read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us"))
    try:
        quota_us, period_us = float(quota or "-1"), float(period or "0")
    except ValueError:
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def cgroup_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The tightest CPU quota, in cores, of this process's cgroup and its ancestors, v2
    (``cpu.max``) or v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); None when unlimited
    or unreadable."""
    own = _own_paths(proc_cgroup)
    quotas = [_v2_quota(d) for d in _chain(root, own.get(""))]
    for name in _V1_CPU_DIRS:
        if (root / name).is_dir():
            quotas += [_v1_quota(d) for d in _chain(root / name, own.get("cpu"))]
    found = [quota for quota in quotas if quota is not None]
    return min(found) if found else None


def cpu_budget(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> CpuBudget:
    return CpuBudget(affinity=affinity_cores(), quota=cgroup_quota(root, proc_cgroup))


def usable_cores(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """The smaller of the affinity mask's cores and the cgroup quota (rounded up), at least 1."""
    return cpu_budget(root, proc_cgroup).usable


def torch_threads_for(workers: int, requested: int | None, usable: int | None = None) -> int:
    """Intra-op threads for each of `workers` processes sharing the usable cores: an equal
    share of them (at least 1), or the `requested` number, but never more than the usable
    cores (an explicit request beyond them is capped: those threads could only spin)."""
    cores = usable_cores() if usable is None else max(1, usable)
    if requested is not None:
        return max(1, min(requested, cores))
    return max(1, cores // max(1, workers))


def serving_workers() -> int:
    """Worker processes serving on this machine: what `serve --workers` set, else the
    conventional WEB_CONCURRENCY (uvicorn's and gunicorn's), else 1."""
    for name in (WORKERS_ENV, "WEB_CONCURRENCY"):
        try:
            value = int(os.environ.get(name, ""))
        except ValueError:
            continue
        if value >= 1:
            return value
    return 1


CPUINFO = Path("/proc/cpuinfo")
# x86 flags of bf16 matrix instructions: AVX512-BF16 dot products and AMX tiles. Without one
# of them a CPU's bf16 matmul converts to fp32 and back, slower than staying in fp32.
BF16_MATMUL_FLAGS = ("avx512_bf16", "amx_bf16")


def read_cpuinfo(path: Path = CPUINFO) -> str | None:
    """The text of /proc/cpuinfo; None where there is none (not Linux) or it is unreadable."""
    try:
        return path.read_text()
    except OSError:
        return None


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first processor listed in /proc/cpuinfo's text (its x86
    ``flags`` line; every core of a machine lists the same ones)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def bf16_matmul_support(cpuinfo: str | None) -> tuple[bool, str]:
    """Whether the CPU multiplies bf16 matrices in hardware, read from /proc/cpuinfo's text
    (None: not readable), and why, in words. Unknown counts as unsupported: bf16 on a CPU
    without these instructions is emulated and slower."""
    if cpuinfo is None:
        return False, "no /proc/cpuinfo to read the CPU's flags from"
    found = sorted(cpu_flags(cpuinfo) & set(BF16_MATMUL_FLAGS))
    if found:
        return True, f"the CPU has {' and '.join(found)}"
    return False, f"the CPU has neither {' nor '.join(BF16_MATMUL_FLAGS)} in /proc/cpuinfo"
