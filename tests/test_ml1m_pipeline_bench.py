"""bench/ml1m_pipeline: the stage lines of a run's log become per-stage seconds, and the load
watch it times the run under keeps a peak with its time and a series."""

from __future__ import annotations

import itertools
import time

from bench.common import LoadWatch
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
