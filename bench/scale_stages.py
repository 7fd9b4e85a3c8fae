"""The per-size measurements of bench/scale.py that run in a process of their own (so each
reports its own peak memory): training time per epoch, and the drift scan in one process or
on Ray. Each prints one JSON object on its last line of stdout.

    python -m bench.scale_stages train --steps 12 --eval-users 600
    python -m bench.scale_stages scan --mode single|ray --users FILE

Both read the store named by ``DRIFTREC_DATABASE_URL`` (the scan also writes its checks
there) and the model registry of the settings (the scan loads the champion).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.core.config import PROJECT_ROOT, get_settings

TRAIN_CONFIG = PROJECT_ROOT / "configs" / "ml1m.yaml"
TEXT_DIM = 384  # all-MiniLM-L6-v2's embedding width (what the encoder gives the model)


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def _timed(started: float) -> float:
    return round(time.perf_counter() - started, 2)


# ----------------------------------------------------------------------------- training
def measure_training(steps: int, eval_users: int, seed: int = 0) -> dict[str, Any]:
    """Time what one epoch of the ML-1M config's sequence model costs on this store.

    Measured: reading the snapshot, the leave-one-out split, cutting the training windows
    (all three over the whole store), ``steps`` optimiser steps of ``batch_size`` windows
    (after 2 warm-up steps), and the validation pass over ``eval_users`` users. The epoch
    is then extrapolated: steps per epoch x the median step, plus the validation pass
    scaled to every user. The item text embeddings are random stand-ins of the encoder's
    shape (the encoder's cost depends on the catalogue, not on the number of events)."""
    import numpy as np
    import torch

    from app.ml.sequence import SequenceInterestModel
    from training.config import load_config
    from training.data.sequences import TrainingWindows, shuffle_ties, training_windows
    from training.evaluate import evaluate_model
    from training.pipeline import load_snapshot
    from training.recommender import prepare_split
    from training.sequence_trainer import train_epoch

    torch.set_num_threads(1)
    config = load_config(TRAIN_CONFIG).recommender
    out: dict[str, Any] = {"config": str(TRAIN_CONFIG.relative_to(PROJECT_ROOT)),
                           "batch_size": config.batch_size, "max_len": config.max_len,
                           "loss_negatives": config.loss_negatives}
    started, cpu = time.perf_counter(), time.process_time()
    snapshot = load_snapshot()
    out["snapshot_read_s"] = _timed(started)
    out["snapshot_read_cpu_s"] = round(time.process_time() - cpu, 2)  # this process only
    out["snapshot_rss_mib"] = peak_rss_mib()
    started = time.perf_counter()
    vocab, split = prepare_split(snapshot, None)
    out["split_s"] = _timed(started)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    windows = training_windows(shuffle_ties(split.train, rng), config.max_len)
    out["windows_s"] = _timed(started)
    out.update(events=snapshot.n_events, users=len(split.train), windows=len(windows),
               steps_per_epoch=math.ceil(len(windows) / config.batch_size))
    del snapshot
    torch.manual_seed(seed)
    model = SequenceInterestModel(config.model_config(True), vocab.n_items, TEXT_DIM)
    text = torch.randn(vocab.n_items + 1, TEXT_DIM)
    text[0] = 0
    model.set_item_text_embeddings(text)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    train = config.train_config()
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(windows), generator=generator)
    device = torch.device("cpu")
    step_seconds, step_cpu = [], []
    for step in range(steps + 2):
        batch = order[(step * train.batch_size) % len(windows):][:train.batch_size]
        one = TrainingWindows(windows.items[batch], windows.times[batch],
                              windows.targets[batch])
        begun, cpu = time.perf_counter(), time.process_time()
        train_epoch(model, one, optimizer, train, device, generator, progress=False)
        if step >= 2:  # the first steps allocate
            step_seconds.append(time.perf_counter() - begun)
            step_cpu.append(time.process_time() - cpu)
    out["step_s_median"] = round(statistics.median(step_seconds), 3)
    # CPU time of a step (one thread): what the step costs whatever else shares the cores
    out["step_cpu_s_median"] = round(statistics.median(step_cpu), 3)
    out["steps_timed"] = len(step_seconds)
    sample = np.sort(rng.choice(len(split.train), min(eval_users, len(split.train)),
                                replace=False))
    sub = type(split)(train=[split.train[i] for i in sample],
                      valid_items=split.valid_items[sample], valid_times=split.valid_times[sample],
                      test_items=split.test_items[sample], test_times=split.test_times[sample])
    started, cpu = time.perf_counter(), time.process_time()
    evaluate_model(model, sub, device, parts=("val",))
    eval_s = time.perf_counter() - started
    eval_cpu = time.process_time() - cpu
    out["eval_users_timed"] = len(sample)
    out["eval_s_sample"] = round(eval_s, 2)
    out["eval_s_extrapolated"] = round(eval_s * len(split.train) / len(sample), 1)
    # what the validation pass holds at once: the scores and their history-masked copy,
    # float32 [users, items + 1] each
    out["eval_score_matrix_mib"] = round(2 * len(split.train) * (vocab.n_items + 1) * 4
                                         / 2**20, 1)
    out["train_s_extrapolated"] = round(out["steps_per_epoch"] * out["step_s_median"], 1)
    out["epoch_s_extrapolated"] = round(out["train_s_extrapolated"]
                                        + out["eval_s_extrapolated"], 1)
    # the same in CPU seconds (one thread), which the shared machine's load does not stretch
    out["epoch_cpu_s_extrapolated"] = round(
        out["steps_per_epoch"] * out["step_cpu_s_median"]
        + eval_cpu * len(split.train) / len(sample), 1)
    out["peak_rss_mib"] = peak_rss_mib()
    return out


# ---------------------------------------------------------------------------- drift scan
def measure_scan(mode: str, users: Sequence[str], num_cpus: int = 2,
                 batch_size: int = 64) -> dict[str, Any]:
    """The drift scan of these users with the champion, as `python -m app drift-scan` runs it
    (`mode` "single": one transaction per user; "ray": `--ray`, a local cluster of
    `num_cpus`). Times the model load, the Ray start, and each user (single) or each batch
    (Ray) as it completes, so fixed costs and the per-user rate can be told apart."""
    from app.services.drift_scan import all_user_ids, scan_users
    from app.services.model_manager import ModelManager
    from app.store.db import make_engine, make_session_factory

    settings = get_settings()
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    out: dict[str, Any] = {"mode": mode, "users_sampled": len(users)}
    started = time.perf_counter()
    out["stored_users"] = len(all_user_ids(factory))  # what a whole scan lists first
    out["list_users_s"] = _timed(started)
    started = time.perf_counter()
    manager = ModelManager(settings, factory)
    outcome = manager.reload()
    if manager.loaded is None:
        raise SystemExit(f"no model to scan with: {outcome.error}")
    out["model"] = f"{settings.model_name} v{manager.current.version}"
    out["model_load_s"] = _timed(started)
    marks: list[tuple[float, int]] = []  # (seconds since the scan began, users done)
    done = 0
    cpu = time.process_time()
    if mode == "single":
        begun = time.perf_counter()

        def tick() -> None:
            nonlocal done
            done += 1
            marks.append((time.perf_counter() - begun, done))

        report = scan_users(factory, manager.current, list(users), on_user=tick, backfill=True)
    else:
        from app.services import drift_scan_ray

        started = time.perf_counter()
        drift_scan_ray.init_ray(None, num_cpus)
        out["ray_init_s"] = _timed(started)
        begun = time.perf_counter()

        def batch_done(count: int) -> None:
            nonlocal done
            done += count
            marks.append((time.perf_counter() - begun, done))

        report = drift_scan_ray.scan_with_ray(settings, manager.current.version,
                                              batch_size=batch_size, user_ids=list(users),
                                              on_users=batch_done)
        out.update(ray_actors=max(1, num_cpus), ray_batch_size=batch_size)
    out["scan_s"] = round(marks[-1][0], 2) if marks else 0.0
    if mode == "single":  # this process did the checks: its CPU per user
        out["cpu_ms_per_user"] = round(1000 * (time.process_time() - cpu) / len(users), 1)
    out.update(users_checked=report.users, drifted=report.drifts, skipped=report.skipped)
    out.update(rate_fit(marks))
    out["peak_rss_mib"] = peak_rss_mib()
    engine.dispose()
    return out


def rate_fit(marks: Sequence[tuple[float, int]]) -> dict[str, float]:
    """From (seconds, users done) marks: the time to the first completion (start-up: actors
    loading the model, the first read) and the steady rate after it (users per second)."""
    if not marks:
        return {}
    first_s, first_n = marks[0]
    last_s, last_n = marks[-1]
    steady = (last_n - first_n) / (last_s - first_s) if last_s > first_s else float(last_n)
    return {"first_completion_s": round(first_s, 2), "first_completion_users": first_n,
            "steady_users_per_s": round(steady, 2)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_stages", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)
    train = sub.add_parser("train")
    train.add_argument("--steps", type=int, default=12)
    train.add_argument("--eval-users", type=int, default=600)
    scan = sub.add_parser("scan")
    scan.add_argument("--mode", choices=["single", "ray"], required=True)
    scan.add_argument("--users", type=Path, required=True, help="user ids, one a line")
    scan.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.stage == "train":
        result = measure_training(args.steps, args.eval_users)
    else:
        users = [u for u in args.users.read_text().split() if u]
        result = measure_scan(args.mode, users, args.num_cpus)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
