"""bench/ml1m_pipeline: the stage lines of a run's log become per-stage seconds, and the load
watch it times the run under keeps a peak with its time and a series, and tells the run's
threads from other processes' in what the load average counts."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path

from bench.common import LoadWatch, TaskShares, loaded_tasks, process_table
from bench.ml1m_pipeline import stage_lines


def test_stage_lines_turn_the_runs_clock_into_seconds_per_stage() -> None:
    log = "\n".join([
        "torch threads: 2",
        "[    0.0 s] store snapshot read",
        "ours epoch 1: loss 7.0, val ndcg@10 0.04, 71 s",
        "[ 2627.0 s] recommender trained",
        "[ 2636.1 s] simple baselines fitted and evaluated (best on validation: cooc)",
        "[ 2700.0 s] a stage no key names",
        "[ 3406.7 s] logged to MLflow (sqlite:///x), run abc; peak RSS 5626 MiB",
    ])
    assert stage_lines(log) == [("snapshot_s", 0.0), ("recommender_s", 2627.0),
                                ("simple_baselines_s", 9.1), ("a stage no key names", 63.9),
                                ("mlflow_logging_s", 706.7)]
    assert stage_lines("no stage here") == []


def test_the_load_watch_keeps_its_peak_time_and_a_series() -> None:
    with LoadWatch(every_s=0.05, series_every_s=0.1) as load:
        time.sleep(0.35)
    assert load.max >= 0.0 and 0.0 <= load.peak_at_s <= 1.0
    times = [at for at, _ in load.series]
    assert len(times) >= 2 and times == sorted(times) and times[0] == 0.0
    assert all(b - a >= 0.1 - 1e-9 for a, b in itertools.pairwise(times))
    with LoadWatch(every_s=0.05) as plain:
        time.sleep(0.1)
    assert plain.series == []


def _fake_process(proc: Path, pid: int, ppid: int, comm: str, tasks: dict[int, str]) -> None:
    """A /proc/<pid> with its stat line and one stat per task (state by tid)."""
    rest = " ".join(["0"] * 40)
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "stat").write_text(f"{pid} ({comm}) S {ppid} {rest}\n")
    for tid, state in tasks.items():
        (proc / str(pid) / "task" / str(tid)).mkdir(parents=True)
        (proc / str(pid) / "task" / str(tid) / "stat").write_text(
            f"{tid} ({comm}) {state} {ppid} {rest}\n")


def test_task_shares_split_the_loaded_tasks_between_the_tree_and_the_rest(
        tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    _fake_process(proc, 100, 1, "python", {100: "R", 101: "S", 102: "R"})
    _fake_process(proc, 200, 100, "pt_main (x)", {200: "D"})  # a child: the run's
    _fake_process(proc, 300, 1, "beam.smp", {300: "R", 301: "R", 302: "S"})
    _fake_process(proc, 400, 300, "erl_child_setup", {400: "D"})  # not below 100
    (proc / "self").mkdir()  # not a process directory
    tasks = loaded_tasks(process_table(proc), proc)
    assert sorted((t.pid, t.tid, t.state) for t in tasks) == [
        (100, 100, "R"), (100, 102, "R"), (200, 200, "D"), (300, 300, "R"), (300, 301, "R"),
        (400, 400, "D")]
    assert {t.process for t in tasks if t.pid == 200} == {"pt_main (x)"}
    shares = TaskShares(100, proc=proc)
    shares.exclude_thread(102)  # the sampling thread is not the run's work
    assert shares.sample() == (2, 3)
    _fake_process(proc, 500, 1, "redis-server", {500: "R"})
    assert shares.sample() == (2, 4)
    summary = shares.summary()
    assert summary["samples"] == 2 and summary["run_mean"] == 2.0 and summary["run_max"] == 2
    assert summary["others_mean"] == 3.5 and summary["others_max"] == 4
    assert summary["others_by_process"] == {"beam.smp": 2.0, "erl_child_setup": 1.0,
                                            "redis-server": 0.5}
    assert shares.recent_means() == {"run_mean": 2.0, "others_mean": 3.5}


def test_the_load_watch_names_a_busy_process_outside_the_watched_tree() -> None:
    # each says so once started, so the idle one is asleep while the watch samples
    idle = subprocess.Popen([sys.executable, "-c",
                             "import time; print('up', flush=True); time.sleep(30)"],
                            stdout=subprocess.PIPE, text=True)
    busy = subprocess.Popen([sys.executable, "-c",
                             "import time; print('up', flush=True); end = time.time() + 30\n"
                             "while time.time() < end: pass"], stdout=subprocess.PIPE, text=True)
    try:
        assert idle.stdout is not None and busy.stdout is not None
        assert idle.stdout.readline() == busy.stdout.readline() == "up\n"
        with LoadWatch(every_s=0.05, tasks_of=idle.pid) as load:
            time.sleep(0.6)
    finally:
        for child in (idle, busy):
            child.kill()
            child.wait()
    assert load.tasks is not None
    summary = load.tasks.summary()
    assert summary["samples"] >= 3
    assert summary["run_max"] == 0  # the sleeping tree never runs
    assert summary["others_max"] >= 1
    assert any(name.startswith("python") for name in summary["others_by_process"])
    assert load.tasks_before_peak is not None
