"""Evaluation through the bundle, and the quality table (printed and written as JSON).

The "ours" rows are recomputed here with the bundle's own scoring methods (string item ids in,
scores out: what serving calls), so the published numbers come from the served code path.
They are compared with the trainer's figures; a gap means the two code paths disagree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from app.domain.drift import ChangePoint
from app.ml.bundle import InterestModelBundle
from app.ml.incremental import engine_for
from app.ml.parts import EventTrace
from app.ml.parts.protocols import IncrementalEngine
from training.data.sequences import LeaveOneOutSplit, UserSequence
from training.drift.evaluation import evaluate_alarms
from training.drift.splicing import DriftCase
from training.evaluate import blocked_metrics

ANCHOR = {"name": "ref: RecBole SASRec, ml-100k", "hr@10": 0.1326, "ndcg@10": 0.0636,
          "mrr@10": 0.0429}
# Published reference rows per dataset (run.anchors), printed beside ours. ml-100k: unmasked
# (notes/sequence-model.md); ml-1m: history masked, length-200 histories, leave-one-out, full
# ranking (notes/datasets.md), so they sit in the *_masked columns.
ANCHORS: dict[str, list[dict[str, Any]]] = {
    "ml-100k": [ANCHOR],
    "ml-1m": [
        {"name": "ref: SASRec+ (full CE), ml-1m", "hr@10_masked": 0.3152,
         "ndcg@10_masked": 0.1821},
        {"name": "ref: HSTU-large, ml-1m", "hr@10_masked": 0.3294, "ndcg@10_masked": 0.1893},
        {"name": "ref: SASRec (1 negative), ml-1m", "hr@10_masked": 0.2500,
         "ndcg@10_masked": 0.1341},
    ],
}
PROTOCOL = ("leave-one-out per user (events by timestamp, ties in ingestion order; "
            "last = test, second last = validation); full ranking over all items; "
            "unmasked, and *_masked with the user's history removed; HR/NDCG/MRR@10")
RANKING_KEYS = ("ndcg@10", "hr@10", "mrr@10", "ndcg@10_masked", "hr@10_masked")
DRIFT_KEYS = ("f1", "precision", "recall", "median_delay", "alarms_per_1k")
DRIFT_ROWS = ("ours", "adwin", "page_hinkley", "kernel_cpd", "bocpd_topics_h100",
              "glr_topics_w40")


def _as_strings(sequences: Sequence[UserSequence], item_ids: Sequence[str]
                ) -> tuple[list[list[str]], list[list[float]]]:
    return ([[item_ids[i - 1] for i in seq.items] for seq in sequences],
            [[float(t) for t in seq.times] for seq in sequences])


def bundle_scores(bundle: InterestModelBundle, sequences: Sequence[UserSequence],
                  batch_size: int = 256, at: np.ndarray | None = None) -> torch.Tensor:
    """Scores from ``bundle.score_next_batch``, with the padding column put back so they line
    up with model indices: FloatTensor[U, N + 1], column 0 = -inf. ``at``: float64 [U]
    request times (the held-out events' times), as serving is told them."""
    histories, times = _as_strings(sequences, bundle.item_ids)
    request = None if at is None else [float(t) for t in at]
    chunks = [bundle.score_next_batch(histories[s:s + batch_size], times[s:s + batch_size],
                                      at=None if request is None else request[s:s + batch_size])
              for s in range(0, len(histories), batch_size)]
    scores = torch.cat(chunks)
    return torch.cat([torch.full((len(scores), 1), -math.inf), scores], dim=1)


def bundle_ranking_metrics(bundle: InterestModelBundle, split: LeaveOneOutSplit
                           ) -> dict[str, dict[str, float]]:
    """{"val": metrics, "test": metrics} computed through the bundle's scoring, each request
    made at its held-out event's time; users in blocks of ``EVAL_BLOCK_CELLS`` scores."""
    parts = {"val": (split.valid_inputs(), split.valid_items, split.valid_times),
             "test": (split.test_inputs(), split.test_items, split.test_times)}
    columns = len(bundle.item_ids) + 1
    result = {}
    for part, (inputs, targets, at) in parts.items():
        def score(start: int, stop: int, inputs: list[UserSequence] = inputs,
                  at: np.ndarray = at) -> torch.Tensor:
            return bundle_scores(bundle, inputs[start:stop], at=at[start:stop])

        result[part] = blocked_metrics(score, inputs, targets, columns)
    return result


SERVED_FIRST = 10  # events a served state is first built from (one replay of them)
SERVED_CHUNK = 16  # new events per extension (serving replays the window above this)
PROB_TOLERANCE = 1e-4  # served vs evaluated probabilities: float noise below this


def served_traces(bundle: InterestModelBundle, cases: Sequence[DriftCase],
                  batch_size: int = 64) -> list[EventTrace]:
    """Each case's trace through the path that serves it: for a detector with an incremental
    engine (app.ml.incremental.engine_for: feature-gru, bocpd), a state built from the first
    ``SERVED_FIRST`` events and then extended ``SERVED_CHUNK`` events at a time, as the
    per-user states of app.services.interest_state carry it; for one without, the bundle's
    replay of the window (what serves it). Each case is read through its last ``max_events``
    events, as the bundle reads a history."""
    out: list[EventTrace] = []
    engine = engine_for(bundle.sequence_model, bundle.drift_detector)
    width = bundle.drift.max_events
    for start in range(0, len(cases), batch_size):
        chunk = cases[start:start + batch_size]
        if engine is None:
            histories, times = _as_strings([_sequence(c) for c in chunk], bundle.item_ids)
            out.extend(bundle.drift_event_traces([h[-width:] for h in histories],
                                                 [t[-width:] for t in times]))
            continue
        windows = [(np.asarray(c.items[-width:], np.int64),
                    np.asarray(c.times[-width:], np.float64)) for c in chunk]
        out.extend(state.trace() for state in served_states(engine, windows))
    return out


def served_states(engine: IncrementalEngine, windows: Sequence[tuple[np.ndarray, np.ndarray]]
                  ) -> list[Any]:
    """Each window's state as serving carries it: built from its first ``SERVED_FIRST``
    events, then extended ``SERVED_CHUNK`` events at a time to its end."""
    states = engine.start([(idx[:SERVED_FIRST], ts[:SERVED_FIRST]) for idx, ts in windows])
    done = min(SERVED_FIRST, max((len(idx) for idx, _ in windows), default=0))
    while any(done < len(idx) for idx, _ in windows):
        todo = [b for b, (idx, _) in enumerate(windows) if done < len(idx)]
        grown = engine.extend([(states[b], windows[b][0][done:done + SERVED_CHUNK],
                                windows[b][1][done:done + SERVED_CHUNK]) for b in todo])
        for b, state in zip(todo, grown, strict=True):
            states[b] = state
        done += SERVED_CHUNK
    return states


def _sequence(case: DriftCase) -> UserSequence:
    return UserSequence(case.user_a, np.asarray(case.items, np.int64),
                        np.asarray(case.times, np.float64))


def bundle_drift_metrics(bundle: InterestModelBundle, cases: Sequence[DriftCase], margin: int,
                         traces: Sequence[EventTrace] | None = None
                         ) -> dict[str, float | None]:
    """Our drift detector's metrics on ``cases`` as served (``served_traces`` unless given)
    and decided by the bundle's rule, each change scored where the detector places it."""
    traces = served_traces(bundle, cases) if traces is None else traces
    alarms = [np.sort(np.asarray([p.change_index for p in bundle.change_points(t)],
                                 dtype=np.int64)) for t in traces]
    return evaluate_alarms(alarms, [c.change_point for c in cases], [len(c.items) for c in cases],
                           [c.kind for c in cases], margin)


@dataclass
class DecisionParity:
    """Served vs evaluated decisions over a set of cases."""

    cases: int
    differing: list[int]  # cases whose decisions differ beyond float noise (refused)
    noise: list[int]  # cases whose decisions differ with every probability within tolerance

    @property
    def ok(self) -> bool:
        return not self.differing


def decision_parity(bundle: InterestModelBundle, served: Sequence[EventTrace],
                    evaluated: Sequence[list[ChangePoint]],
                    evaluated_traces: Sequence[EventTrace]) -> DecisionParity:
    """Compare every change point (alarm, located change, kind) the bundle decides on its
    served traces with those evaluation decided. A case whose decisions differ while its two
    traces agree within ``PROB_TOLERANCE`` everywhere is float noise at the threshold (an
    fp32 batch against a step at a time), logged but not refused."""
    differing, noise = [], []
    for n, (trace, points, other) in enumerate(zip(served, evaluated, evaluated_traces,
                                                   strict=True)):
        if _decisions(bundle.change_points(trace)) == _decisions(points):
            continue
        close = (len(trace.probabilities) == len(other.probabilities) and bool(np.all(
            np.abs(trace.probabilities.astype(np.float64) - other.probabilities) <=
            PROB_TOLERANCE)))
        (noise if close else differing).append(n)
    return DecisionParity(len(served), differing, noise)


def _decisions(points: Sequence[ChangePoint]) -> list[tuple[int, int, str]]:
    return [(p.index, p.change_index, p.kind) for p in points]


def describe_snapshot(summary: Mapping[str, Any]) -> str:
    """A store snapshot in words, for the quality table ("dataset")."""
    users = summary.get("max_users")
    subset = f", first {users} users" if users is not None else ""
    return (f"store snapshot: {summary['items']} items, {summary['users']} users, "
            f"{summary['events']} events{subset}")


def quality_table(ours: Mapping[str, float], trainer_metrics: Mapping[str, Any],
                  drift: Mapping[str, Mapping[str, Any]], train_seconds: float, device: str,
                  drift_unseen: Mapping[str, Mapping[str, Any]] | None = None,
                  dataset: str = "store snapshot", anchors: str = "ml-100k") -> dict[str, Any]:
    """The bench/results/quality.json document (test split figures). ``drift``: seen users,
    generator A; ``drift_unseen``: unseen users, generator B (the headline), same rows;
    ``anchors`` names the published rows (``ANCHORS``) that the printed table shows beside
    ours."""
    models = {"ours": _pick(ours, RANKING_KEYS)}
    for name in ("sasrec_id", "pop"):
        if name in trainer_metrics:
            models[name] = _pick(trainer_metrics[name]["test"], RANKING_KEYS)
    return {
        "dataset": dataset, "protocol": PROTOCOL, "models": models,
        "drift": {name: _pick(drift[name], DRIFT_KEYS) for name in DRIFT_ROWS if name in drift},
        **({"drift_unseen": {name: _pick(drift_unseen[name], DRIFT_KEYS) for name in DRIFT_ROWS
                             if name in drift_unseen}} if drift_unseen else {}),
        "train_seconds": round(train_seconds, 1), "device": device,
        **({} if anchors == "ml-100k" else {"anchors": {
            row["name"]: {k: v for k, v in row.items() if k != "name"}
            for row in ANCHORS.get(anchors, [])}}),
    }


def pick_ranking(values: Mapping[str, Any]) -> dict[str, float | None]:
    """The quality.json ranking row of one model's metrics."""
    return _pick(values, RANKING_KEYS)


def _pick(values: Mapping[str, Any], keys: Sequence[str]) -> dict[str, float | None]:
    return {k: None if values.get(k) is None else round(float(values[k]), 6) for k in keys}


def format_tables(quality: Mapping[str, Any], drift_all: Mapping[str, Mapping[str, Any]],
                  drift_unseen: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """Human-readable comparison: ranking rows next to the anchor, then every drift row."""
    lines = [f"next-item, test split ({quality['dataset']}, full ranking)",
             f"{'model':<34}" + "".join(f"{k:>16}" for k in RANKING_KEYS)]
    rows = dict(quality["models"])
    for name, anchor in quality.get("anchors", {ANCHOR["name"]: ANCHOR}).items():
        rows[name] = {k: anchor.get(k) for k in RANKING_KEYS}
    for name, values in rows.items():
        lines.append(f"{name:<34}" + "".join(_cell(values.get(k)) for k in RANKING_KEYS))
    lines += ["", "interest drift, evaluation users (baselines tuned to our alarm rate)",
              f"{'detector':<34}" + "".join(f"{k:>16}" for k in DRIFT_KEYS)]
    for name, values in drift_all.items():
        lines.append(f"{name:<34}" + "".join(_cell(values.get(k)) for k in DRIFT_KEYS))
    if drift_unseen:
        lines += ["", "interest drift, UNSEEN evaluation users, splice generator B (headline)",
                  f"{'detector':<34}" + "".join(f"{k:>16}" for k in DRIFT_KEYS)]
        for name, values in drift_unseen.items():
            lines.append(f"{name:<34}" + "".join(_cell(values.get(k)) for k in DRIFT_KEYS))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return f"{'-':>16}"
    return f"{float(value):>16.4f}"


def max_gap(a: Mapping[str, Any], b: Mapping[str, Any], keys: Sequence[str]) -> float:
    """Largest absolute difference over ``keys`` present (as numbers) in both."""
    gaps = [abs(float(a[k]) - float(b[k])) for k in keys
            if a.get(k) is not None and b.get(k) is not None]
    return max(gaps, default=0.0)
