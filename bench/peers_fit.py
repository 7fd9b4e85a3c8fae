"""The peers' side of `bench.peers`: fit one peer on an exported split, write its candidates.

Runs in the peers' virtualenv (`.venv-peers`, `bench/requirements-peers.txt`): numpy, scipy,
pandas, torch, RecTools and implicit; nothing of `app` or `training` (a test checks the
imports), so the two stacks never share an environment. One process per peer, so that the
parent can read each one's peak memory:

    python -m bench.peers_fit --model rectools_ease --workdir var/peers/ml-100k

reads ``<workdir>/split.npz`` (written by ``python -m bench.peers export``) and writes
``<workdir>/<model>.npz`` (candidates per user, for validation and test) and
``<workdir>/<model>.json`` (settings, tuning grid, seconds).

Candidates: for each user, the peer's own scores of (a) its ``TOP`` best items outside the
user's history and (b) every item of the history. ``bench.peers evaluate`` puts them back into
a full score row (every other item below them all) and runs ``training.evaluate.all_metrics``.
For any k <= TOP this gives the rank a full score row would give, unmasked and history-masked
alike: an item outside the history that is not listed scores at most the TOP-th listed one, so
a target it would outrank is already past TOP; the history is listed whole, so the masked rank
of a re-consumed target is exact too. An item the peer cannot score (never in its training
data) is not listed; a target it cannot score counts as a miss.

The tuning metric inside this process (validation NDCG@10, full ranking, unmasked and
history-masked, the rank counted as the number of items scored strictly higher than the
target, as training.evaluate counts it) only chooses a setting; every reported figure is
computed by ``bench.peers evaluate`` with the project's own evaluation code, which also checks
that its validation NDCG@10 equals the one tuned on here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TOP = 100  # candidates outside the history per user (exact metrics for any k <= TOP)
CHUNK_CELLS = 4_000_000  # users x items scored at once (16 MB of float32)
MODELS = ("rectools_ease", "implicit_als", "rectools_sasrec")
EASE_LAMBDAS = (10.0, 50.0, 200.0, 500.0, 1000.0, 3000.0, 10000.0)
EASE_LAMBDAS_LARGE = (200.0, 1000.0, 5000.0)  # above LARGE_CATALOGUE items: each is a cubic fit
LARGE_CATALOGUE = 8_000
EASE_MAX_ITEMS = 20_000  # a dense 20k x 20k float32 matrix is 1.6 GB; a fit holds about 4
ALS_GRID = {"factors": (16, 32, 64, 128), "regularization": (0.1, 1.0, 10.0), "alpha": (1.0, 10.0)}
ALS_ITERATIONS = 15
# SASRec: RecTools' defaults except those named here (n_factors 64 and 2 blocks as ours; the
# window is the compared config's max_len).
SASREC_DEFAULTS = {"n_factors": 64, "n_blocks": 2, "n_heads": 4, "dropout_rate": 0.2,
                   "lr": 1e-3, "batch_size": 128, "loss": "softmax"}
SASREC_SAMPLED_NEGATIVES = 1024  # above LARGE_SOFTMAX items: a full softmax per position
LARGE_SOFTMAX = 20_000  # over 20k items is several GB of logits per batch
VAL_STEPS = 50  # SASRec: about this many optimiser steps between two validations


# --------------------------------------------------------------------------- the split
@dataclass(frozen=True)
class Sequences:
    """Per-user item (model index 1..N) and time arrays, flattened: user r's events are
    ``items[indptr[r]:indptr[r + 1]]``."""

    indptr: np.ndarray  # int64 [U + 1]
    items: np.ndarray  # int64 [E]
    times: np.ndarray  # float64 [E]

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def row(self, r: int) -> np.ndarray:
        return self.items[self.indptr[r]:self.indptr[r + 1]]

    def user_rows(self) -> np.ndarray:
        return np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.indptr))


@dataclass(frozen=True)
class Split:
    n_items: int
    train: Sequences  # training parts (what ours trains on)
    valid_inputs: Sequences  # history for the validation target
    test_inputs: Sequences  # history for the test target
    valid_items: np.ndarray  # int64 [U]
    test_items: np.ndarray  # int64 [U]


def load_split(path: Path) -> Split:
    with np.load(path) as data:
        def part(name: str) -> Sequences:
            return Sequences(data[f"{name}_indptr"], data[f"{name}_items"],
                             data[f"{name}_times"])
        return Split(int(data["n_items"]), part("train"), part("valid_inputs"),
                     part("test_inputs"), data["valid_items"], data["test_items"])


# --------------------------------------------------------------------------- candidates
@dataclass(frozen=True)
class Candidates:
    """Per-user listed items and the peer's scores of them (flattened like ``Sequences``)."""

    indptr: np.ndarray  # int64 [U + 1]
    items: np.ndarray  # int64 [L]
    scores: np.ndarray  # float32 [L]


def chunks(n_users: int, n_items: int) -> Iterator[slice]:
    size = max(1, CHUNK_CELLS // (n_items + 1))
    for start in range(0, n_users, size):
        yield slice(start, min(n_users, start + size))


def extract(dense: np.ndarray, histories: Sequence[np.ndarray], top: int = TOP
            ) -> list[tuple[np.ndarray, np.ndarray]]:
    """From full score rows [c, N + 1] (column 0 and unscorable items -inf): per row, the
    ``top`` best items outside the history and every scorable history item, with scores."""
    out = []
    for row, history in zip(dense, histories, strict=True):
        seen = np.unique(history)
        outside = row.copy()
        outside[0] = -np.inf
        outside[seen] = -np.inf
        k = min(top, len(outside) - 1)
        best = np.argpartition(-outside, k - 1)[:k] if k > 0 else np.zeros(0, np.int64)
        best = best[np.isfinite(outside[best])]
        seen = seen[np.isfinite(row[seen])]
        items = np.concatenate([best, seen]).astype(np.int64)
        out.append((items, row[items].astype(np.float32)))
    return out


def ndcg_sums(dense: np.ndarray, histories: Sequence[np.ndarray], targets: np.ndarray
              ) -> tuple[float, float]:
    """Sums over rows of NDCG@10, full ranking, unmasked and history-masked (the rank: items
    scored strictly higher; masked: not counting the history's other items), as
    training.evaluate counts them; an unscorable target is a miss. Tuning only."""
    own = dense[np.arange(len(dense)), targets]
    ranks = (dense > own[:, None]).sum(axis=1)
    masked = ranks.copy()
    for row, (history, target) in enumerate(zip(histories, targets, strict=True)):
        seen = np.unique(history)
        seen = seen[seen != target]
        masked[row] -= int((dense[row, seen] > own[row]).sum())
    scorable = np.isfinite(own)
    unmasked, hidden = (float(np.where((r < 10) & scorable, 1.0 / np.log2(r + 2.0), 0.0).sum())
                        for r in (ranks, masked))
    return unmasked, hidden


@dataclass(frozen=True)
class Pass:
    """One scoring pass over every user: candidates, and validation NDCG@10 when targets
    were given (unmasked, history-masked)."""

    candidates: Candidates
    ndcg: float | None = None
    ndcg_masked: float | None = None


def score_pass(score_rows: Callable[[slice], np.ndarray], inputs: Sequences, n_items: int,
               targets: np.ndarray | None = None, top: int = TOP) -> Pass:
    """Score ``chunks`` of users at a time: their candidates and, with ``targets``, NDCG@10."""
    lists: list[tuple[np.ndarray, np.ndarray]] = []
    sums = np.zeros(2)
    for rows in chunks(len(inputs), n_items):
        dense = score_rows(rows)
        histories = [inputs.row(r) for r in range(rows.start, rows.stop)]
        lists.extend(extract(dense, histories, top))
        if targets is not None:
            sums += ndcg_sums(dense, histories, targets[rows])
    lengths = np.array([len(items) for items, _ in lists], np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = np.concatenate([i for i, _ in lists]) if lists else np.zeros(0, np.int64)
    scores = np.concatenate([v for _, v in lists]) if lists else np.zeros(0, np.float32)
    cands = Candidates(indptr, items, scores)
    if targets is None:
        return Pass(cands)
    means = sums / max(1, len(inputs))
    return Pass(cands, float(means[0]), float(means[1]))


def write_candidates(path: Path, parts: dict[str, Candidates]) -> None:
    arrays = {}
    for part, cands in parts.items():
        arrays.update({f"{part}_indptr": cands.indptr, f"{part}_items": cands.items,
                       f"{part}_scores": cands.scores})
    tmp = path.with_name(path.name + ".partial.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- helpers
def user_items(seqs: Sequences, n_items: int, keep: np.ndarray | None = None) -> Any:
    """CSR [U, N + 1] of event counts (``keep``: boolean [N + 1], items to keep)."""
    import scipy.sparse as sp

    rows, items = seqs.user_rows(), seqs.items
    if keep is not None:
        mask = keep[items]
        rows, items = rows[mask], items[mask]
    return sp.csr_matrix((np.ones(len(items), np.float32), (rows, items)),
                         shape=(len(seqs), n_items + 1))


def spread(known: np.ndarray, values: np.ndarray, n_items: int) -> np.ndarray:
    """Scores of the ``known`` items (columns of ``values``) into full rows, -inf elsewhere."""
    dense = np.full((values.shape[0], n_items + 1), -np.inf, np.float32)
    dense[:, known] = values
    return dense


def interactions_frame(seqs: Sequences) -> Any:
    """RecTools' interactions table: user = row number, item = model index, weight 1 per
    event, datetime = the event time. Rows are in each user's order (time, then ingestion),
    which RecTools' stable sort by datetime keeps for tied events."""
    import pandas as pd
    from rectools import Columns

    return pd.DataFrame({Columns.User: seqs.user_rows(), Columns.Item: seqs.items,
                         Columns.Weight: np.ones(len(seqs.items), np.float32),
                         Columns.Datetime: pd.to_datetime(seqs.times, unit="s")})


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def grid_points(grid: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = [{}]
    for key, values in grid.items():
        points = [{**p, key: v} for p in points for v in values]
    return points


# --------------------------------------------------------------------------- EASE
def ease_scorer(seqs: Sequences, n_items: int, regularization: float, max_items: int
                ) -> Callable[[slice], np.ndarray]:
    """RecTools' EASEModel fitted on ``seqs`` (the ``max_items`` most frequent items of them
    when there are more); scores X_u @ B, what its ``recommend`` ranks by."""
    from rectools.dataset import Dataset
    from rectools.models import EASEModel

    counts = np.bincount(seqs.items, minlength=n_items + 1)
    keep = counts > 0
    if int(keep.sum()) > max_items:
        order = np.lexsort((np.arange(n_items + 1), -counts))  # most frequent, lower index
        keep = np.zeros(n_items + 1, bool)
        keep[order[:max_items]] = True
    frame = interactions_frame(seqs)
    frame = frame[keep[frame["item_id"].to_numpy()]]
    dataset = Dataset.construct(frame)
    model = EASEModel(regularization=regularization, recommend_n_threads=1,
                      recommend_use_gpu_ranking=False).fit(dataset)
    known = dataset.item_id_map.external_ids.astype(np.int64)
    matrix = user_items(seqs, n_items, keep)[:, known]
    weight = model.weight

    def score_rows(rows: slice) -> np.ndarray:
        dense = spread(known, np.asarray(matrix[rows] @ weight, np.float32), n_items)
        # A user none of whose items is among the kept ones has no EASE score (all zeros,
        # which the evaluation would count as ties in the target's favour): unscorable.
        dense[np.diff(matrix[rows].indptr) == 0] = -np.inf
        return dense

    return score_rows


# --------------------------------------------------------------------------- ALS
def als_scorer(seqs: Sequences, n_items: int, factors: int, regularization: float,
               alpha: float, seed: int, threads: int) -> Callable[[slice], np.ndarray]:
    """implicit's AlternatingLeastSquares on the user x item counts of ``seqs``; scores are
    the factors' dot products (what its ``recommend`` ranks by). Items without an event are
    left unscored (ALS would give them a zero vector)."""
    from implicit.cpu.als import AlternatingLeastSquares

    matrix = user_items(seqs, n_items)
    model = AlternatingLeastSquares(factors=factors, regularization=regularization,
                                    alpha=alpha, iterations=ALS_ITERATIONS, random_state=seed,
                                    num_threads=threads)
    model.fit(matrix, show_progress=False)
    known = np.flatnonzero(np.bincount(seqs.items, minlength=n_items + 1)).astype(np.int64)
    users, item_factors = model.user_factors, model.item_factors[known]

    def score_rows(rows: slice) -> np.ndarray:
        return spread(known, users[rows] @ item_factors.T, n_items)

    return score_rows


# --------------------------------------------------------------------------- SASRec
def sasrec_model(max_len: int, n_items: int, seed: int, overrides: dict[str, Any]) -> Any:
    from pytorch_lightning import Trainer
    from rectools.models import SASRecModel
    from rectools.models.nn.item_net import IdEmbeddingsItemNet

    settings = {**SASREC_DEFAULTS, **overrides}
    if n_items > LARGE_SOFTMAX and "loss" not in overrides:
        settings.update(loss="sampled_softmax", n_negatives=SASREC_SAMPLED_NEGATIVES)

    def trainer() -> Trainer:
        # One epoch per fit_partial call; no checkpoints, logs or progress bars.
        return Trainer(max_epochs=1, min_epochs=1, deterministic=True, accelerator="cpu",
                       devices=1, enable_progress_bar=False, enable_model_summary=False,
                       logger=False, enable_checkpointing=False)

    model = SASRecModel(session_max_len=max_len, item_net_block_types=(IdEmbeddingsItemNet,),
                        deterministic=True, recommend_torch_device="cpu",
                        get_trainer_func=trainer, **settings)
    return model, {**settings, "session_max_len": max_len}


def sasrec_scorer(model: Any, inputs: Sequences, n_items: int, k: int | None = None
                  ) -> Callable[[slice], np.ndarray]:
    """Full score rows from SASRec's own ``recommend`` over ``inputs`` (each user's session is
    their input history); k=None: every item it knows."""
    from rectools.dataset import Dataset

    dataset = Dataset.construct(interactions_frame(inputs))

    def score_rows(rows: slice) -> np.ndarray:
        users = np.arange(rows.start, rows.stop)
        n_known = len(model.data_preparator.get_known_item_ids())
        reco = model.recommend(users=users, dataset=dataset, k=k or n_known,
                               filter_viewed=False, on_unsupported_targets="warn")
        dense = np.full((len(users), n_items + 1), -np.inf, np.float32)
        dense[reco["user_id"].to_numpy() - rows.start, reco["item_id"].to_numpy()] = \
            reco["score"].to_numpy()
        return dense

    return score_rows


def top10_ndcg(model: Any, inputs: Sequences, n_items: int, targets: np.ndarray) -> float:
    """Validation NDCG@10 (unmasked) from SASRec's top 10: all that NDCG@10 needs."""
    score_rows = sasrec_scorer(model, inputs, n_items, k=10)
    total = 0.0
    for rows in chunks(len(inputs), n_items):
        histories = [inputs.row(r) for r in range(rows.start, rows.stop)]
        total += ndcg_sums(score_rows(rows), histories, targets[rows])[0]
    return total / max(1, len(inputs))


def fit_sasrec(split: Split, args: argparse.Namespace, report: dict[str, Any]
               ) -> dict[str, Candidates]:
    """Train on the training parts (as ours), one epoch at a time; keep the weights of the
    best validation NDCG@10 (unmasked, as ours; early stopping with ``--patience``, and
    ``--max-minutes``)."""
    import copy

    import pytorch_lightning as pl
    import torch
    from rectools.dataset import Dataset

    pl.seed_everything(args.seed, workers=True)
    torch.set_num_threads(args.threads)
    model, settings = sasrec_model(args.max_len, split.n_items, args.seed, {})
    dataset = Dataset.construct(interactions_frame(split.train))
    # RecTools' SASRec takes one window per user: an epoch is users / batch_size steps (8 on
    # ml-100k), so validation comes every `every` epochs, after about VAL_STEPS steps.
    steps = math.ceil(len(split.train) / settings["batch_size"])
    every = max(1, math.ceil(VAL_STEPS / steps))
    started = time.perf_counter()
    best: tuple[float, int, Any] = (-1.0, 0, None)
    history, epoch = [], 0
    while epoch < args.max_epochs:
        run = min(every, args.max_epochs - epoch)
        model.fit_partial(dataset, min_epochs=run, max_epochs=run)
        epoch += run
        score = top10_ndcg(model, split.valid_inputs, split.n_items, split.valid_items)
        history.append([epoch, round(score, 6)])
        if score > best[0]:
            best = (score, epoch, copy.deepcopy(model.lightning_model.state_dict()))
        elapsed = time.perf_counter() - started
        print(f"rectools_sasrec epoch {epoch}: val ndcg@10 {score:.4f} ({elapsed:.0f} s)",
              flush=True)
        if epoch - best[1] >= args.patience * every or elapsed > args.max_minutes * 60:
            break
    model.lightning_model.load_state_dict(best[2])
    report.update(train_seconds=round(time.perf_counter() - started, 1),
                  epochs_run=epoch, best_epoch=best[1], val_ndcg_by_epoch=history,
                  tuning={"ndcg@10": best[0]},
                  config={**settings, "max_epochs": args.max_epochs, "validate_every": every,
                          "patience": f"{args.patience} validations",
                          "max_minutes": args.max_minutes, "seed": args.seed,
                          "item_net": "item id embeddings only (no features)",
                          "tuned_on": "validation NDCG@10, unmasked (epochs)"},
                  saw="fit on the training parts (split.train, as ours), its last "
                      "session_max_len events per user (RecTools' SASRec trains one window per "
                      "user); epochs chosen on validation NDCG@10; validation scored from "
                      "valid_inputs and test from test_inputs (the histories ours is scored "
                      "from), no refit",
                  train_seconds_note="the training loop, per-epoch validation included")
    started = time.perf_counter()
    parts = {part: score_pass(sasrec_scorer(model, inputs, split.n_items), inputs,
                              split.n_items).candidates
             for part, inputs in (("val", split.valid_inputs), ("test", split.test_inputs))}
    report["score_seconds"] = round(time.perf_counter() - started, 1)
    return parts


# --------------------------------------------------------------------------- tuning
def tuned_setup(split: Split, args: argparse.Namespace
                ) -> tuple[list[dict[str, Any]], Callable[..., Any], dict[str, Any]]:
    """EASE / ALS: the grid, a maker (inputs, setting) -> scorer, the fixed settings."""
    n = split.n_items
    if args.model == "rectools_ease":
        used = int((np.bincount(split.test_inputs.items, minlength=n + 1) > 0).sum())
        lambdas = (EASE_LAMBDAS if min(used, args.ease_max_items) <= LARGE_CATALOGUE
                   else EASE_LAMBDAS_LARGE)
        points = [{"regularization": lam} for lam in (args.ease_lambdas or lambdas)]

        def make_ease(seqs: Sequences, p: dict[str, Any]) -> Callable[[slice], np.ndarray]:
            return ease_scorer(seqs, n, p["regularization"], args.ease_max_items)

        return points, make_ease, {
            "max_items": args.ease_max_items, "items_used_test": min(used, args.ease_max_items),
            "weights": "event counts (a repeated item counts each time)"}

    def make_als(seqs: Sequences, p: dict[str, Any]) -> Callable[[slice], np.ndarray]:
        return als_scorer(seqs, n, p["factors"], p["regularization"], p["alpha"], args.seed,
                          args.threads)

    return grid_points(ALS_GRID), make_als, {
        "iterations": ALS_ITERATIONS, "seed": args.seed,
        "confidence": "1 + alpha * event count (implicit's ALS)"}


def fit_tuned(split: Split, args: argparse.Namespace, report: dict[str, Any]
              ) -> dict[str, Candidates]:
    """EASE / ALS: each grid point fitted on the validation inputs, scored on validation;
    the best refitted on the test inputs (everything before the test target).

    Tuned twice: on unmasked validation NDCG@10 (the headline columns) and on history-masked
    (the *_masked columns). These models rebuild the user's history, so on data where nobody
    consumes an item twice their best unmasked setting is the one that lets popularity
    outweigh the history: a poor setting once the history is filtered (as RecTools
    recommends with filter_viewed). Each column gets the setting tuned for it ("test" and
    "test_masked" candidates when the two differ)."""
    points, make, fixed = tuned_setup(split, args)
    if args.smoke:
        points = points[:2]
    n, grid = split.n_items, []
    best: dict[str, tuple[float, dict[str, Any], Candidates]] = {}
    started = time.perf_counter()
    for point in points:
        result = score_pass(make(split.valid_inputs, point), split.valid_inputs, n,
                            split.valid_items)
        scores = {"ndcg@10": result.ndcg or 0.0, "ndcg@10_masked": result.ndcg_masked or 0.0}
        grid.append({**point, **{f"val_{k}": round(v, 6) for k, v in scores.items()}})
        print(f"{args.model} {point}: val ndcg@10 {scores['ndcg@10']:.4f}, masked "
              f"{scores['ndcg@10_masked']:.4f}", flush=True)
        for key, value in scores.items():
            if key not in best or value > best[key][0]:  # the first of the best on ties
                best[key] = (value, point, result.candidates)
    tuning_seconds = time.perf_counter() - started
    parts = {"val": best["ndcg@10"][2]}
    fits: dict[str, float] = {}
    started = time.perf_counter()
    for key, part in (("ndcg@10", "test"), ("ndcg@10_masked", "test_masked")):
        point = best[key][1]
        if part == "test_masked" and point == best["ndcg@10"][1]:
            break  # one setting serves both columns
        fit_started = time.perf_counter()
        scorer = make(split.test_inputs, point)
        fits[key] = round(time.perf_counter() - fit_started, 2)
        parts[part] = score_pass(scorer, split.test_inputs, n).candidates
        if part == "test_masked":
            parts["val_masked"] = best[key][2]
    report.update(train_seconds=fits["ndcg@10"], tuning_seconds=round(tuning_seconds, 1),
                  tuning={k: v[0] for k, v in best.items()},
                  config={"chosen": best["ndcg@10"][1],
                          "chosen_masked": best["ndcg@10_masked"][1], "grid": grid,
                          "tuned_on": "validation NDCG@10: unmasked for the headline columns, "
                                      "history-masked for the *_masked ones", **fixed},
                  saw="tuning: each setting fitted on every user's validation inputs (training "
                      "part; with basket_holdout its events before the validation target's "
                      "timestamp) and scored from those rows; test: the chosen setting refitted "
                      "on every user's test inputs (training part + validation item, before "
                      "the test target's timestamp) and scored from those rows",
                  train_seconds_note="the final fit on the test inputs (of the setting tuned "
                                     "unmasked); tuning_seconds is the grid on validation")
    if "ndcg@10_masked" in fits:
        report["train_seconds_masked_setting"] = fits["ndcg@10_masked"]
    report["score_seconds"] = round(time.perf_counter() - started - sum(fits.values()), 1)
    return parts


def quiet() -> None:
    """Library chatter off (deprecations, Lightning's device banner): the log shows the
    tuning lines."""
    import logging
    import warnings

    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def preload(model: str) -> None:
    """Import the peer's libraries before anything is fitted, so that the report can tell the
    memory of the interpreter and libraries alone from the fit's."""
    import pandas  # noqa: F401
    import rectools.models  # noqa: F401

    if model == "implicit_als":
        import implicit.cpu.als  # noqa: F401
    if model == "rectools_sasrec":
        import pytorch_lightning  # noqa: F401
        import torch  # noqa: F401


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("rectools", "pm-implicit", "implicit", "torch", "pytorch-lightning", "numpy",
                 "scipy", "pandas"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers_fit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-len", type=int, default=50, help="SASRec session_max_len")
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--max-minutes", type=float, default=60.0)
    parser.add_argument("--ease-max-items", type=int, default=EASE_MAX_ITEMS)
    parser.add_argument("--ease-lambdas", type=float, nargs="*")
    parser.add_argument("--smoke", action="store_true", help="two grid points only")
    args = parser.parse_args(argv)
    quiet()
    preload(args.model)
    report: dict[str, Any] = {"model": args.model, "versions": versions(), "top": TOP,
                              "rss_after_imports_mib": peak_rss_mib()}
    split = load_split(args.workdir / "split.npz")
    fit = fit_sasrec if args.model == "rectools_sasrec" else fit_tuned
    started = time.perf_counter()
    parts = fit(split, args, report)
    report["process_seconds"] = round(time.perf_counter() - started, 1)
    report["peak_rss_mib_self"] = peak_rss_mib()
    if any(math.isnan(float(c.scores.sum())) for c in parts.values()):
        raise SystemExit(f"{args.model}: NaN scores")
    write_candidates(args.workdir / f"{args.model}.npz", parts)
    (args.workdir / f"{args.model}.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
