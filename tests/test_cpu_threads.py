"""torch's threads sized by the usable cores (affinity mask, cgroup quota), and the warning
for an epoch slowed down by another process."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from app.core import cpus
from app.core.cpus import cgroup_quota, torch_threads_for, usable_cores
from training import sequence_trainer, threads
from training.sequence_trainer import (
    SequenceTrainConfig,
    SequenceTrainResult,
    slow_epoch,
    train_sequence_model,
)


@pytest.fixture
def four_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_cgroup_v2_quota_is_rounded_up(tmp_path: Path, four_cores: None) -> None:
    _write(tmp_path / "cpu.max", "150000 100000\n")
    assert cgroup_quota(tmp_path, tmp_path / "none") == pytest.approx(1.5)
    assert usable_cores(tmp_path, tmp_path / "none") == 2


def test_no_quota_leaves_the_affinity_mask(tmp_path: Path, four_cores: None) -> None:
    _write(tmp_path / "cpu.max", "max 100000\n")
    assert cgroup_quota(tmp_path, tmp_path / "none") is None
    assert usable_cores(tmp_path, tmp_path / "none") == 4
    assert usable_cores(tmp_path / "missing", tmp_path / "none") == 4  # no cgroup files at all


def test_a_cgroup_v1_quota(tmp_path: Path, four_cores: None) -> None:
    _write(tmp_path / "cpu" / "cpu.cfs_quota_us", "150000\n")
    _write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert usable_cores(tmp_path, tmp_path / "none") == 2
    _write(tmp_path / "cpu" / "cpu.cfs_quota_us", "-1\n")  # unlimited
    assert usable_cores(tmp_path, tmp_path / "none") == 4


def test_a_quota_on_a_parent_of_the_process_cgroup_counts(tmp_path: Path,
                                                         four_cores: None) -> None:
    _write(tmp_path / "proc_cgroup", "0::/parent/child\n")
    _write(tmp_path / "parent" / "cpu.max", "100000 100000\n")
    _write(tmp_path / "parent" / "child" / "cpu.max", "max 100000\n")
    assert usable_cores(tmp_path, tmp_path / "proc_cgroup") == 1
    _write(tmp_path / "proc_cgroup", "4:cpu,cpuacct:/job\n")  # v1, combined controllers
    _write(tmp_path / "cpu,cpuacct" / "job" / "cpu.cfs_quota_us", "300000\n")
    _write(tmp_path / "cpu,cpuacct" / "job" / "cpu.cfs_period_us", "100000\n")
    assert usable_cores(tmp_path, tmp_path / "proc_cgroup") == 3


def test_a_tiny_quota_still_gives_one_core_and_the_mask_bounds_a_large_one(
        tmp_path: Path, four_cores: None) -> None:
    _write(tmp_path / "cpu.max", "10000 100000\n")
    assert usable_cores(tmp_path, tmp_path / "none") == 1
    _write(tmp_path / "cpu.max", "1600000 100000\n")
    assert usable_cores(tmp_path, tmp_path / "none") == 4


def test_without_sched_getaffinity_the_cpu_count_is_used(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert usable_cores(tmp_path, tmp_path / "none") == 6


def test_workers_split_the_cores_and_never_get_more_than_usable() -> None:
    assert torch_threads_for(1, None, usable=4) == 4
    assert torch_threads_for(2, None, usable=4) == 2
    assert torch_threads_for(3, None, usable=4) == 1
    assert torch_threads_for(8, None, usable=2) == 1  # at least one
    assert torch_threads_for(1, 3, usable=4) == 3  # an explicit request
    assert torch_threads_for(4, 16, usable=4) == 4  # capped at the usable cores
    assert all(torch_threads_for(w, r, usable=u) <= u for w in range(1, 9)
               for r in (None, 1, 2, 64) for u in range(1, 9))


def test_serving_workers_come_from_serve_or_web_concurrency(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cpus.WORKERS_ENV, raising=False)
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    assert cpus.serving_workers() == 1
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert cpus.serving_workers() == 3
    monkeypatch.setenv(cpus.WORKERS_ENV, "2")
    assert cpus.serving_workers() == 2
    monkeypatch.setenv(cpus.WORKERS_ENV, "many")
    assert cpus.serving_workers() == 3


def test_the_serving_worker_logs_its_share(monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    from app import main

    chosen: list[int] = []
    monkeypatch.setattr(main, "cpu_budget", lambda: cpus.CpuBudget(affinity=4, quota=None))
    monkeypatch.setattr(main.torch, "set_num_threads", chosen.append)
    monkeypatch.setenv(cpus.WORKERS_ENV, "2")
    with caplog.at_level(logging.INFO, logger="driftrec"):
        assert main.set_serving_threads(None) == 2
        assert main.set_serving_threads(8) == 4
    assert chosen == [2, 4]
    lines = [r.getMessage() for r in caplog.records if "torch threads" in r.getMessage()]
    assert "split among 2 workers" in lines[0] and "affinity 4, cgroup quota none" in lines[0]
    assert "DRIFTREC_TORCH_THREADS=8, capped" in lines[1]


def test_training_uses_the_usable_cores_or_omp_num_threads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    intra: list[int] = []
    monkeypatch.setattr(threads, "cpu_budget", lambda: cpus.CpuBudget(affinity=4, quota=1.5))
    monkeypatch.setattr(torch, "set_num_threads", intra.append)

    def refused(n: int) -> None:
        raise RuntimeError("cannot set number of interop threads after parallel work started")

    monkeypatch.setattr(torch, "set_num_interop_threads", refused)  # tolerated
    said: list[str] = []
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.use_usable_cores(said.append) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.use_usable_cores(said.append) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    assert threads.use_usable_cores(said.append) == 2
    assert intra == [2, 1, 2]
    assert said[0] == "torch threads: 2 (2 usable cores: affinity 4, cgroup quota 1.5 cores)"
    assert "OMP_NUM_THREADS=1;" in said[1] and "OMP_NUM_THREADS=8, capped" in said[2]


def test_an_epoch_over_twice_the_first_ones_is_slow() -> None:
    assert slow_epoch([10.0, 10.0, 10.0, 21.0]) == pytest.approx(2.1)
    assert slow_epoch([10.0, 10.0, 10.0, 19.0]) is None
    assert slow_epoch([10.0]) is None  # nothing to compare with
    assert slow_epoch([10.0, 25.0]) == pytest.approx(2.5)
    # the median of the first three: one odd early epoch does not move the baseline
    assert slow_epoch([30.0, 10.0, 10.0, 12.0, 21.0]) == pytest.approx(2.1)
    assert slow_epoch([10.0, 10.0, 10.0, 25.0], factor=3.0) is None
    assert slow_epoch([0.01, 0.01, 0.01, 0.05]) is None  # timer noise, not contention


def test_slow_epochs_are_counted_from_the_history() -> None:
    result = SequenceTrainResult(model=None, best_epoch=1, best_val=0.0,  # type: ignore[arg-type]
                                 averaged=False,
                                 history=[{"slow": False}, {"slow": True}, {}, {"slow": True}])
    assert result.slow_epochs == 2


def test_a_slow_epoch_is_logged_and_marked_in_the_history(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_training_resume import small_model, small_split

    seen: list[list[float]] = []

    def third_is_slow(seconds: list[float]) -> float | None:
        seen.append(list(seconds))
        return 2.4 if len(seconds) == 3 else None

    monkeypatch.setattr(sequence_trainer, "slow_epoch", third_is_slow)
    said: list[str] = []
    result = train_sequence_model(small_model(), small_split(),
                                  SequenceTrainConfig(batch_size=8, max_epochs=3, patience=5),
                                  torch.device("cpu"), 0, progress=False, log=said.append)
    assert [len(s) for s in seen] == [1, 2, 3]
    assert [row["slow"] for row in result.history] == [False, False, True]
    assert result.slow_epochs == 1
    warning = next(line for line in said if "competing for the CPU" in line)
    assert warning.startswith("ours epoch 3 took ") and "2.4x the first epochs'" in warning
