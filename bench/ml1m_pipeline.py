"""The whole MovieLens-1M pipeline, timed from outside as one command: snapshot of the store,
encoder, ours, sasrec_id, simple baselines, blend, drift, evaluation through the bundle,
MLflow logging, registration and the promotion gate.

    DRIFTREC_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/driftrec_ml1m \\
        python -m bench.ml1m_pipeline [--config configs/ml1m.yaml]

It runs ``python -m training train --config CONFIG --register --promote --no-progress`` as a
child process, keeps its log (``var/ml1m_pipeline.log``), samples the 1-minute load average
every second, and adds to the quality file the run published (``run.quality_json``):

- ``total_seconds``: the child's wall time, process start to exit (registration included);
- ``stage_seconds``: the run's own per-stage figures, plus one entry per stage line the run
  logs (``[  t s] stage``), the time from the previous line to it, and ``registration_s``
  from the run's last stage line to the child's exit;
- ``load_average_max``: the highest 1-minute load average seen, sampled every second (the run
  was alone when it is about the run's own threads, at most a little over 2 on this 2-core
  machine), and ``pipeline_run.load_average_series`` every 30 s to place a peak in the log;
- ``pipeline_run.load_tasks``: what that load average counted, sampled every second from
  /proc: the running or waiting (R) and uninterruptible (D) threads of this command's process
  tree and of every other process, the other processes that contributed most, and both
  means over the minute before the peak. A machine's own services (a broker's periodic
  health check, say) show there by name;
- the command, the machine and when it ran.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, LoadWatch, machine
from training.config import load_config

DEFAULT_CONFIG = "configs/ml1m.yaml"
SERIES_EVERY_S = 30.0
ENVIRONMENT = ("OMP_", "OPENBLAS_", "DRIFTREC_MLFLOW")  # the settings a run records
STAGE_LINE = re.compile(r"^\[\s*(?P<seconds>[0-9.]+) s\] (?P<stage>.+)$")
STAGE_KEYS = (  # the run's stage lines (training.pipeline's ``done``) by their first words
    ("store snapshot read", "snapshot_s"),
    ("recommender trained", "recommender_s"),
    ("simple baselines", "simple_baselines_s"),
    ("ranker blend", "blend_s"),
    ("drift head trained", "drift_stage_s"),
    ("bundle built", "bundle_evaluation_s"),
    ("logged to MLflow", "mlflow_logging_s"),
)


def stage_lines(log: str) -> list[tuple[str, float]]:
    """(stage key, seconds since the previous stage line) for each stage line of a run's log,
    in order; a line no key names is kept under its own words."""
    stages: list[tuple[str, float]] = []
    previous = 0.0
    for line in log.splitlines():
        match = STAGE_LINE.match(line.strip())
        if match is None:
            continue
        at, text = float(match["seconds"]), match["stage"]
        key = next((k for prefix, k in STAGE_KEYS if text.startswith(prefix)), text)
        stages.append((key, round(at - previous, 1)))
        previous = at
    return stages


def run(config: str, log_path: Path, extra: list[str]) -> dict[str, Any]:
    """Run the training command; its wall time, exit status, load and stages."""
    command = [sys.executable, "-m", "training", "train", "--config", config, "--register",
               "--promote", "--no-progress", *extra]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    clock = time.perf_counter()
    with (LoadWatch(series_every_s=SERIES_EVERY_S, tasks_of=os.getpid()) as load,
          log_path.open("w") as sink):
        status = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT,
                                cwd=ROOT).returncode
    seconds = time.perf_counter() - clock
    log = log_path.read_text()
    stages = stage_lines(log)
    last = sum(s for _, s in stages)
    return {"command": shlex.join(["python", *command[1:]]), "exit_status": status,
            "total_seconds": round(seconds, 1), "load_average_max": load.max,
            "load_average_max_at_s": round(load.peak_at_s, 1),
            "load_average_series": load.series,
            # what the load average counted: this command's threads and everyone else's
            "load_tasks": {**(load.tasks.summary() if load.tasks else {}),
                           "before_peak": load.tasks_before_peak},
            "logged_stages": stages,
            # process start (imports, config) before the run's clock, and everything after
            # its last stage line: the MLflow registration and the promotion gate
            "registration_s": round(seconds - last, 1) if stages else None,
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                                  / 1024.0, 1),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--log", default=str(ROOT / "var" / "ml1m_pipeline.log"))
    parser.add_argument("train_args", nargs=argparse.REMAINDER,
                        help="more arguments for `python -m training train`, after --")
    args = parser.parse_args(argv)
    extra = [a for a in args.train_args if a != "--"]
    config = load_config(args.config)
    if not config.run.quality_json:
        parser.error(f"{args.config} publishes no quality file (run.quality_json)")
    published = ROOT / config.run.quality_json
    before = published.stat().st_mtime if published.is_file() else None
    measured = run(args.config, Path(args.log), extra)
    print(json.dumps({k: v for k, v in measured.items() if k != "logged_stages"}))
    if measured["exit_status"] != 0:
        print(f"the run failed; its log: {args.log}", file=sys.stderr)
        return int(measured["exit_status"])
    if not published.is_file() or published.stat().st_mtime == before:
        print(f"the run did not publish {published}", file=sys.stderr)
        return 1
    quality = json.loads(published.read_text())
    stage_seconds = dict(quality.get("stage_seconds", {}))
    for key, seconds in measured.pop("logged_stages"):
        stage_seconds[key] = seconds
    stage_seconds["registration_s"] = measured.pop("registration_s")
    quality["stage_seconds"] = stage_seconds
    quality["total_seconds"] = measured.pop("total_seconds")
    quality["load_average_max"] = measured.pop("load_average_max")
    quality["pipeline_run"] = {**measured, "machine": machine(),
                               "environment": {k: v for k, v in os.environ.items()
                                               if k.startswith(ENVIRONMENT)},
                               "what": "one command from process start to exit: snapshot, "
                                       "encoder, ours, sasrec_id (when trained), simple "
                                       "baselines, blend, "
                                       "drift, bundle evaluation, MLflow logging, "
                                       "registration and the promotion gate"}
    published.write_text(json.dumps(quality, indent=2) + "\n")
    print(f"{published}: total_seconds {quality['total_seconds']}, load_average_max "
          f"{quality['load_average_max']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
