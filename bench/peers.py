"""Peers side by side (issue 27, item 6): RecTools' EASE and SASRec and implicit's ALS against
ours, popularity and buy-again, on one store snapshot and split, by one evaluation code.

    python -m bench.peers run --dataset ml-100k --database-url URL [--config configs/ml100k.yaml]
        [--ours-json var/runs/ml100k/quality.json] [--smoke]
    python -m bench.peers table            # the markdown table of bench/results/peers.json

(`make bench-peers`.) ``run`` is three steps, each also a subcommand:

1. ``export`` (this virtualenv: the project's code): the store snapshot (``load_snapshot``), the
   split ours is evaluated on (``training.recommender.prepare_split`` with the config's
   ``basket_holdout``, or the flag), written to ``var/peers/<dataset>/split.npz``: training
   parts, validation and test inputs (``valid_inputs()`` / ``test_inputs()``) and targets.
2. ``fit``: each peer in its own process of the peers' virtualenv (``.venv-peers``,
   ``bench/requirements-peers.txt``; ``bench/peers_fit.py``, which imports nothing of the
   project), and pop / repeat / cooc (``training.baselines``) in a process of this one. Each
   process's peak resident memory (``wait4``) and the highest 1-minute load average seen
   while it ran are recorded. What each peer saw, its grid and settings: bench/peers_fit.py.
3. ``evaluate`` (this virtualenv): each peer's candidates (its own scores of its best 100
   items outside each history and of every history item) are put back into full score rows,
   every other item below them (a target the peer cannot score: a miss), and scored with
   ``training.evaluate.all_metrics``, the code that scores ours; exact for k <= 100 (see
   bench/peers_fit.py). ``ours`` comes from the training run's ``quality.json``
   (``--ours-json``), checked to be of the same split: the run's own pop and repeat test
   figures must equal those computed here. Writes the dataset's entry of
   ``bench/results/peers.json`` (other datasets' entries are kept); ``--smoke`` writes
   ``var/peers/<dataset>/peers.json`` instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.core.config import get_settings
from bench.common import machine
from training import baselines as base
from training.config import load_config
from training.data.sequences import LeaveOneOutSplit, UserSequence
from training.data.store import InteractionSnapshot
from training.evaluate import all_metrics
from training.pipeline import load_snapshot
from training.quality import describe_snapshot
from training.recommender import prepare_split

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "peers.json"
WORKDIR = ROOT / "var" / "peers"
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
PEERS = ("rectools_ease", "implicit_als", "rectools_sasrec")
BASELINES = ("pop", "repeat", "cooc")
METRIC_KEYS = ("ndcg@10", "hr@10", "mrr@10", "ndcg@10_masked", "hr@10_masked")
FLOOR = -1e30  # an item the peer did not list: below every listed score
BELOW = -3e38  # a target the peer did not list: below the floor too (a miss)
POLL_SECONDS = 1.0
PROTOCOL = ("the split ours is evaluated on (training.recommender.prepare_split: leave-one-out "
            "per user, events by time then ingestion order, last = test, second last = "
            "validation; basket_holdout as recorded); full ranking over the catalogue; "
            "training.evaluate.all_metrics for every row (ours through its training run, pop "
            "/ repeat / cooc through training.baselines, the peers through their listed "
            "scores); test figures; *_masked with the user's history removed")


# --------------------------------------------------------------------------- export
def split_arrays(split: LeaveOneOutSplit, n_items: int, user_ids: Sequence[str]
                 ) -> dict[str, np.ndarray]:
    """A LeaveOneOutSplit as flat arrays (what bench/peers_fit.py reads)."""
    arrays: dict[str, np.ndarray] = {
        "n_items": np.array(n_items), "basket_holdout": np.array(split.basket_holdout),
        "user_ids": np.array(list(user_ids), dtype=str),
        "valid_items": split.valid_items, "valid_times": split.valid_times,
        "test_items": split.test_items, "test_times": split.test_times}
    for name, seqs in (("train", split.train), ("valid_inputs", split.valid_inputs()),
                       ("test_inputs", split.test_inputs())):
        lengths = np.array([len(s.items) for s in seqs], np.int64)
        arrays[f"{name}_indptr"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        arrays[f"{name}_items"] = (np.concatenate([s.items for s in seqs]).astype(np.int64)
                                   if seqs else np.zeros(0, np.int64))
        arrays[f"{name}_times"] = (np.concatenate([s.times for s in seqs]).astype(np.float64)
                                   if seqs else np.zeros(0))
    return arrays


def read_split(path: Path) -> tuple[int, LeaveOneOutSplit]:
    """(n_items, LeaveOneOutSplit) back from ``split.npz``; its validation and test inputs,
    recomputed by the split's own methods, must equal the exported ones."""
    with np.load(path) as data:
        indptr, items, times = data["train_indptr"], data["train_items"], data["train_times"]
        users = data["user_ids"]
        train = [UserSequence(str(users[r]), items[indptr[r]:indptr[r + 1]],
                              times[indptr[r]:indptr[r + 1]]) for r in range(len(users))]
        split = LeaveOneOutSplit(train, data["valid_items"], data["valid_times"],
                                 data["test_items"], data["test_times"],
                                 bool(data["basket_holdout"]))
        for name, seqs in (("valid_inputs", split.valid_inputs()),
                           ("test_inputs", split.test_inputs())):
            flat = np.concatenate([s.items for s in seqs]) if seqs else np.zeros(0, np.int64)
            if not np.array_equal(flat, data[f"{name}_items"]):
                raise ValueError(f"{path}: {name} differ from the split's own")
        return int(data["n_items"]), split


def redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def write_export(snapshot: InteractionSnapshot, basket_holdout: bool, workdir: Path,
                 meta: Mapping[str, Any]) -> dict[str, Any]:
    """The split ours is evaluated on (``prepare_split``, every user) of ``snapshot``, as
    ``workdir/split.npz``, and what it is of as ``workdir/meta.json``."""
    workdir.mkdir(parents=True, exist_ok=True)
    vocab, split = prepare_split(snapshot, None, basket_holdout)
    arrays = split_arrays(split, vocab.n_items, [s.user_id for s in split.train])
    tmp = workdir / "split.partial.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, workdir / "split.npz")
    summary = snapshot.summary()
    document = {**meta, "basket_holdout": split.basket_holdout,
                "snapshot": {"items": summary["items"], "users": summary["users"],
                             "events": summary["events"], "last_seq": summary["last_seq"],
                             "fingerprint": snapshot.fingerprint},
                "split_users": len(split.train),
                "exported": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    (workdir / "meta.json").write_text(json.dumps(document, indent=2) + "\n")
    return document


def export(args: argparse.Namespace) -> Path:
    workdir = WORKDIR / args.dataset
    started = time.perf_counter()
    snapshot = load_snapshot(args.database_url)
    meta = write_export(snapshot, args.basket_holdout, workdir, {
        "dataset": args.dataset, "database": redact(args.database_url), "config": args.config,
        "max_len": args.config_max_len,
        "snapshot_read_seconds": round(time.perf_counter() - started, 1)})
    print(f"exported {meta['split_users']} users, {meta['snapshot']['items']} items "
          f"(basket_holdout={meta['basket_holdout']}) to {workdir}")
    return workdir


# --------------------------------------------------------------------------- fit
def run_measured(command: Sequence[str], env: Mapping[str, str]) -> dict[str, Any]:
    """Run a command; its wall seconds, peak resident memory (its own ``wait4`` rusage) and
    the 1-minute load average at its start and highest while it ran."""
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    load_max = load_start
    process = subprocess.Popen(list(command), cwd=ROOT, env={**os.environ, **env})
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        load_max = max(load_max, os.getloadavg()[0])
        time.sleep(POLL_SECONDS)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}")
    return {"process_wall_seconds": round(time.perf_counter() - started, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
            "load_average_start": round(load_start, 2), "load_average_max": round(load_max, 2)}


def fit(args: argparse.Namespace) -> None:
    workdir = WORKDIR / args.dataset
    threads = str(args.threads)
    env = {"OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
           "MKL_NUM_THREADS": threads}
    meta = json.loads((workdir / "meta.json").read_text())
    stamp = {"split_exported": meta["exported"]}  # which export each result is of
    measured = {}
    if "baselines" in args.models:
        measured["baselines"] = {**run_measured(
            [sys.executable, "-m", "bench.peers", "baselines", "--dataset", args.dataset], env),
            **stamp}
        print(f"baselines: {measured['baselines']}", flush=True)
    python = str(args.peers_python)
    max_len = args.max_len or meta["max_len"]  # ours' window, from the exported config
    for model in [m for m in args.models if m in PEERS]:
        command = [python, "-m", "bench.peers_fit", "--model", model, "--workdir",
                   str(workdir), "--seed", str(args.seed), "--threads", threads,
                   "--max-len", str(max_len), "--max-epochs", str(args.max_epochs),
                   "--patience", str(args.patience), "--max-minutes", str(args.max_minutes),
                   "--ease-max-items", str(args.ease_max_items)]
        if args.smoke:
            command.append("--smoke")
        measured[model] = {**run_measured(command, env), **stamp}
        print(f"{model}: {measured[model]}", flush=True)
    previous = workdir / "measured.json"
    merged = json.loads(previous.read_text()) if previous.is_file() else {}
    merged.update(measured)
    previous.write_text(json.dumps(merged, indent=2) + "\n")


def write_baselines(workdir: Path) -> None:
    """pop, repeat and cooc (training.baselines) on the exported split, in this process:
    ``workdir/baselines.json``."""
    n_items, split = read_split(workdir / "split.npz")
    started = time.perf_counter()
    base.popularity_rank(base.item_counts(split.train, n_items))
    pop_seconds = time.perf_counter() - started
    started = time.perf_counter()
    results = base.evaluate_baselines(split, n_items)
    evaluate_seconds = time.perf_counter() - started
    started = time.perf_counter()
    tau = results["repeat"].value if results["repeat"].value is not None else math.inf
    base.repeat_matrix(base.flatten(split.test_inputs()), n_items, tau)
    repeat_seconds = time.perf_counter() - started
    started = time.perf_counter()
    window = int(results["cooc"].value or 1)
    base.cooc_matrix(split.train, n_items, window)
    cooc_seconds = time.perf_counter() - started
    fit_seconds = {"pop": pop_seconds, "repeat": repeat_seconds, "cooc": cooc_seconds}
    saw = {"pop": "event counts of the training parts",
           "repeat": "each user's own test inputs (no fitted model); tau tuned on validation",
           "cooc": "co-occurrence of the training parts; window tuned on validation"}
    out = {name: {"metrics": {part: {k: float(v) for k, v in r.metrics[part].items()}
                              for part in ("val", "test")},
                  "config": {"knob": None if r.knob is None else
                             {r.knob: base.format_value(float(r.value or 0.0))},
                             "grid_val_ndcg@10": r.grid or None},
                  "train_seconds": round(fit_seconds[name], 3), "saw": saw[name],
                  "train_seconds_note": "building the model from the split (counting; for "
                                        "repeat the users' count matrix) with the chosen "
                                        "knob; tuning and evaluation not included"}
           for name, r in results.items()}
    out["_evaluate_seconds"] = round(evaluate_seconds, 1)
    (workdir / "baselines.json").write_text(json.dumps(out, indent=2) + "\n")


# --------------------------------------------------------------------------- evaluate
def candidate_scores(indptr: np.ndarray, items: np.ndarray, scores: np.ndarray, rows: slice,
                     n_items: int, targets: np.ndarray) -> torch.Tensor:
    """Full score rows FloatTensor[c, N + 1] for users ``rows`` from their candidates: listed
    items at the peer's scores, every other item at FLOOR, a target that is not listed below
    that (a miss), column 0 (padding) at -inf."""
    n = rows.stop - rows.start
    dense = np.full((n, n_items + 1), FLOOR, np.float32)
    lo, hi = indptr[rows.start], indptr[rows.stop]
    row_of = np.repeat(np.arange(n), np.diff(indptr[rows.start:rows.stop + 1]))
    dense[row_of, items[lo:hi]] = scores[lo:hi]
    listed = np.zeros((n, n_items + 1), bool)
    listed[row_of, items[lo:hi]] = True
    unlisted = ~listed[np.arange(n), targets]
    dense[np.flatnonzero(unlisted), targets[unlisted]] = BELOW
    out = torch.from_numpy(dense)
    out[:, 0] = -math.inf
    return out


def candidate_metrics(path: Path, part: str, inputs: Sequence[UserSequence], targets: np.ndarray,
                      n_items: int, chunk_cells: int = 4_000_000) -> dict[str, float]:
    """``all_metrics`` over the candidates of one part, in chunks of users (means over users,
    so chunk means weighted by chunk size are the whole's)."""
    with np.load(path) as data:
        indptr, items = data[f"{part}_indptr"], data[f"{part}_items"]
        scores = data[f"{part}_scores"]
    if len(indptr) != len(inputs) + 1:
        raise ValueError(f"{path}: {len(indptr) - 1} users in {part}, the split has "
                         f"{len(inputs)}")
    size = max(1, chunk_cells // (n_items + 1))
    totals: dict[str, float] = {"target_ties": 0.0}
    for start in range(0, len(inputs), size):
        rows = slice(start, min(len(inputs), start + size))
        dense = candidate_scores(indptr, items, scores, rows, n_items, targets[rows])
        for key, value in all_metrics(dense, list(inputs[rows]), targets[rows]).items():
            totals[key] = totals.get(key, 0.0) + value * (rows.stop - rows.start)
        # Ties count in the target's favour (training.evaluate): how often another item
        # shares the target's score, so a peer credited that way shows.
        own = dense.gather(1, torch.from_numpy(targets[rows]).unsqueeze(1))
        totals["target_ties"] += float(((dense == own).sum(dim=1) > 1).sum())
    return {key: value / len(inputs) for key, value in totals.items()}


def ours_entry(path: Path, meta: Mapping[str, Any], pop: Mapping[str, float],
               repeat: Mapping[str, float]) -> dict[str, Any]:
    """Ours' test figures from a training run's quality.json, after checking it is of the same
    snapshot and split: the same snapshot description and the same pop and repeat test
    figures (the run computed them on its split with the same code)."""
    quality = json.loads(path.read_text())
    snap = meta["snapshot"]
    expected = describe_snapshot({"items": snap["items"], "users": snap["users"],
                                  "events": snap["events"]})
    if quality.get("dataset") != expected:
        raise ValueError(f"{path} is of '{quality.get('dataset')}', this split of "
                         f"'{expected}'")
    run_baselines = quality.get("baselines", {})
    for name, figures in (("pop", pop), ("repeat", repeat)):
        theirs = run_baselines.get(name, {}).get("test", {})
        for key in ("ndcg@10", "hr@10"):
            if key in theirs and abs(float(theirs[key]) - figures[key]) > 5e-6:
                raise ValueError(f"{path}: its {name} test {key} {theirs[key]} is not "
                                 f"{figures[key]:.6f}: another split (basket_holdout?)")
    stages = quality.get("stage_seconds", {})
    own = ("encoder_s" in stages or "ours_s" in stages)
    train_seconds = (stages.get("encoder_s", 0.0) + stages.get("ours_s", 0.0) if own
                     else quality.get("train_seconds"))
    return {**{k: quality["models"]["ours"].get(k) for k in METRIC_KEYS},
            "train_seconds": None if train_seconds is None else round(train_seconds, 1),
            "peak_rss_mib": quality.get("peak_rss_mib"),
            "load_average_max": None,
            "source": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
            "split_check": "same snapshot description and same pop / repeat test figures"
                           if run_baselines else "same snapshot description (the run "
                                                 "recorded no baselines)",
            "train_seconds_note": ("the run's encoder fine-tuning and sequence model (stage "
                                   "seconds encoder_s + ours_s, early-stopping validation "
                                   "included); its whole run, drift part included, took "
                                   f"{quality.get('train_seconds')} s") if own else
                                  "the run's train_seconds (whole run)",
            "peak_rss_mib_note": "the whole training run's process (drift part included)",
            **({"run_note": quality["train_seconds_note"]}
               if "train_seconds_note" in quality else {}),
            "saw": "trained on the training parts; validation for early stopping; test "
                   "scored from test_inputs at the test event's time"}


def peer_entry(workdir: Path, name: str, split: LeaveOneOutSplit, n_items: int,
               measured: Mapping[str, Any]) -> dict[str, Any]:
    """A peer's row: its candidates through ``all_metrics``; the *_masked figures from the
    candidates of its setting tuned on masked validation ("val_masked" / "test_masked") when
    that differs from the unmasked one. Each validation NDCG@10 must equal the one its own
    process tuned on (a check of the candidates' round trip)."""
    path = workdir / f"{name}.npz"
    report = json.loads((workdir / f"{name}.json").read_text())
    with np.load(path) as data:
        stored = {key.rsplit("_", 1)[0] for key in data.files if key.endswith("_indptr")}
    inputs = {"val": (split.valid_inputs(), split.valid_items),
              "test": (split.test_inputs(), split.test_items)}
    figures = {part: candidate_metrics(path, part, *inputs[part.split("_")[0]], n_items)
               for part in stored}
    masked = {part: figures[f"{part}_masked" if f"{part}_masked" in figures else part]
              for part in ("val", "test")}
    test = {**{k: v for k, v in figures["test"].items() if not k.endswith("_masked")},
            **{k: v for k, v in masked["test"].items() if k.endswith("_masked")}}
    checks = {"ndcg@10": figures["val"]["ndcg@10"],
              "ndcg@10_masked": masked["val"]["ndcg@10_masked"]}
    agrees = all(abs(checks[k] - float(v)) <= 1e-5 for k, v in report["tuning"].items())
    if not agrees:
        print(f"WARNING {name}: validation {checks} here, {report['tuning']} in its process",
              file=sys.stderr)
    return {**round_metrics(test),
            "val_ndcg@10": round(checks["ndcg@10"], 6),
            "val_ndcg@10_masked": round(checks["ndcg@10_masked"], 6),
            "train_seconds": report["train_seconds"],
            **{k: measured[k] for k in ("peak_rss_mib", "load_average_max",
                                        "load_average_start", "process_wall_seconds")},
            "rss_after_imports_mib": report.get("rss_after_imports_mib"),
            "config": report["config"], "saw": report["saw"],
            "train_seconds_note": report["train_seconds_note"],
            **{k: report[k] for k in ("tuning_seconds", "train_seconds_masked_setting",
                                      "epochs_run", "best_epoch", "val_ndcg_by_epoch",
                                      "score_seconds") if k in report},
            "test_target_ties": round(figures["test"]["target_ties"], 6),
            "tuning_metric_agrees": agrees, "versions": report["versions"]}


def round_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: round(float(metrics[k]), 6) for k in METRIC_KEYS if k in metrics}


def dataset_models(workdir: Path, ours_json: Path | None) -> dict[str, Any]:
    """The rows of one dataset: ours (from its run), the baselines, every fitted peer."""
    meta = json.loads((workdir / "meta.json").read_text())
    measured = json.loads((workdir / "measured.json").read_text())
    n_items, split = read_split(workdir / "split.npz")
    simple = json.loads((workdir / "baselines.json").read_text())
    stale = [name for name, m in measured.items() if m.get("split_exported") != meta["exported"]]
    if stale:
        raise ValueError(f"{workdir}: {stale} were fitted on an earlier export; fit them again")
    models: dict[str, Any] = {}
    if ours_json is not None:
        models["ours"] = ours_entry(ours_json, meta, simple["pop"]["metrics"]["test"],
                                    simple["repeat"]["metrics"]["test"])
    for name in BASELINES:
        entry = simple[name]
        models[name] = {**round_metrics(entry["metrics"]["test"]),
                        "val_ndcg@10": round(entry["metrics"]["val"]["ndcg@10"], 6),
                        "train_seconds": entry["train_seconds"],
                        **{k: measured["baselines"][k]
                           for k in ("peak_rss_mib", "load_average_max")},
                        "config": entry["config"], "saw": entry["saw"],
                        "train_seconds_note": entry["train_seconds_note"],
                        "peak_rss_mib_note": "the process that fitted and evaluated pop, "
                                             "repeat and cooc together (torch and the "
                                             "project's modules imported)"}
    for name in PEERS:
        if (workdir / f"{name}.npz").is_file() and name in measured:
            models[name] = peer_entry(workdir, name, split, n_items, measured[name])
    return models


def evaluate(args: argparse.Namespace) -> Path:
    workdir = WORKDIR / args.dataset
    meta = json.loads((workdir / "meta.json").read_text())
    models = dataset_models(workdir, Path(args.ours_json) if args.ours_json else None)
    entry = {"snapshot": meta["snapshot"], "database": meta["database"],
             "config": meta["config"], "basket_holdout": meta["basket_holdout"],
             "users": meta["split_users"], "items": meta["snapshot"]["items"],
             "machine": machine(),
             "threads": args.threads, "date": datetime.now(UTC).strftime("%Y-%m-%d"),
             "smoke": bool(args.smoke), "models": models}
    output = workdir / "peers.json" if args.smoke else Path(args.output)
    document = json.loads(output.read_text()) if output.is_file() else {}
    document.setdefault("what", "issue 27 item 6: peers side by side, same snapshot, split "
                                "and evaluation code")
    document["protocol"] = PROTOCOL
    document["command"] = "python -m bench.peers run (make bench-peers); bench/peers.py"
    document.setdefault("datasets", {})[args.dataset] = entry
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2) + "\n")
    print(markdown(document, [args.dataset]))
    print(f"written to {output}")
    return output


# --------------------------------------------------------------------------- table
ROW_ORDER = ("ours", "rectools_sasrec", "rectools_ease", "implicit_als", "cooc", "repeat", "pop")


def _cell(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{float(value):.{digits}f}" if digits else f"{float(value):,.0f}"


def markdown(document: Mapping[str, Any], datasets: Sequence[str] | None = None) -> str:
    """One markdown table per dataset: test NDCG@10 / HR@10 (unmasked, the headline, and
    history-masked), training seconds, peak RSS and the highest load average."""
    lines = []
    for name, entry in document.get("datasets", {}).items():
        if datasets and name not in datasets:
            continue
        lines += [f"**{name}** ({entry['users']:,} users, {entry['items']:,} items, "
                  f"basket_holdout {str(entry['basket_holdout']).lower()}"
                  f"{', SMOKE RUN' if entry.get('smoke') else ''}, {entry['date']})", "",
                  "| model | NDCG@10 | HR@10 | NDCG@10 masked | HR@10 masked | train s | "
                  "peak RSS MiB | load avg max |", "|---|---|---|---|---|---|---|---|"]
        models = entry["models"]
        for model in [m for m in ROW_ORDER if m in models] + sorted(set(models) - set(ROW_ORDER)):
            m = models[model]
            seconds = m.get("train_seconds")
            lines.append(f"| {model} | {_cell(m.get('ndcg@10'))} | {_cell(m.get('hr@10'))} | "
                         f"{_cell(m.get('ndcg@10_masked'))} | {_cell(m.get('hr@10_masked'))} | "
                         f"{'-' if seconds is None else f'{float(seconds):,.1f}'} | "
                         f"{_cell(m.get('peak_rss_mib'), 0)} | "
                         f"{_cell(m.get('load_average_max'), 1)} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def table(args: argparse.Namespace) -> None:
    print(markdown(json.loads(Path(args.input).read_text())), end="")


# --------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {name: sub.add_parser(name) for name in ("run", "export", "fit", "evaluate",
                                                         "baselines")}
    for name, command in commands.items():
        command.add_argument("--dataset", required=True, help="its name in peers.json, and "
                             "the folder var/peers/<dataset>")
        if name in ("run", "export"):
            command.add_argument("--database-url", default=None,
                                 help="the store (default DRIFTREC_DATABASE_URL)")
            command.add_argument("--config", default="configs/default.yaml",
                                 help="the compared run's config: its basket_holdout and "
                                      "max_len (SASRec's window) are the defaults")
            command.add_argument("--basket-holdout", action=argparse.BooleanOptionalAction,
                                 default=None)
        if name in ("run", "fit"):
            command.add_argument("--models", nargs="+", choices=("baselines", *PEERS),
                                 default=["baselines", *PEERS])
            command.add_argument("--peers-python", type=Path, default=PEERS_PYTHON)
            command.add_argument("--seed", type=int, default=2020)
            command.add_argument("--max-len", type=int, default=None,
                                 help="SASRec's session_max_len (default: the config's max_len)")
            command.add_argument("--max-epochs", type=int, default=200)
            command.add_argument("--patience", type=int, default=5)
            command.add_argument("--max-minutes", type=float, default=60.0,
                                 help="SASRec's training time cap")
            command.add_argument("--ease-max-items", type=int, default=20_000)
        if name in ("run", "fit", "evaluate"):
            command.add_argument("--threads", type=int, default=1)
            command.add_argument("--smoke", action="store_true",
                                 help="2 grid points, SASRec 2 epochs; results under var/")
        if name in ("run", "evaluate"):
            command.add_argument("--ours-json", help="the training run's quality.json "
                                 "(var/runs/<name>/quality.json)")
            command.add_argument("--output", default=str(RESULT))
    table_parser = sub.add_parser("table", help="the markdown table of peers.json")
    table_parser.add_argument("--input", default=str(RESULT))
    return parser


def _resolve(args: argparse.Namespace) -> None:
    """Defaults: basket_holdout from the compared config (export), SASRec's window from the
    config the split was exported with (fit), the store from DRIFTREC_DATABASE_URL."""
    if args.command in ("run", "export"):
        config = load_config(ROOT / args.config)
        if args.basket_holdout is None:
            args.basket_holdout = config.recommender.basket_holdout
        args.config_max_len = config.recommender.max_len
        if args.database_url is None:
            args.database_url = get_settings().database_url
    if args.command in ("run", "fit") and args.smoke:
        args.max_epochs = min(args.max_epochs, 2)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "table":
        table(args)
        return 0
    _resolve(args)
    if args.command in ("run", "export"):
        export(args)
    if args.command in ("run", "fit"):
        fit(args)
    if args.command == "baselines":
        write_baselines(WORKDIR / args.dataset)
    if args.command in ("run", "evaluate"):
        evaluate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
