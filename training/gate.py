"""The promotion gate: the new version and the champion scored on the same holdout.

Both are scored on the new snapshot's leave-one-out split (validation NDCG@10 decides; test
figures are printed too), each through the bundle code that serves. The champion was trained
on an older, smaller store: items it never saw are added to it the way serving adds them
(``app.ml.catalogue.with_new_items``: embedded from their text by its encoder, scored by text
alone), and histories are read through it as serving reads them. So a growing store can
promote a new version whenever it does better for the users of today's data, and the figures
compared were produced the same way.

A floor comes first: the simple baselines of ``training.baselines`` (popularity, buy-again,
item co-occurrence), fitted and scored on the same split by the same evaluation code. A version
whose validation NDCG@10 is below the best of them is registered but never promoted, even with
no champion at all (a model that ranks worse than "what you bought before" should not serve);
``force`` overrides it, and a config may report the floor without enforcing it
(``run.baseline_gate: false``).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

from app.ml.bundle import BundleError, InterestModelBundle
from app.ml.catalogue import CatalogueItem, with_new_items
from training import quality, registry
from training.baselines import BaselineResult, best_baseline
from training.data.sequences import LeaveOneOutSplit, UserSequence
from training.data.store import InteractionSnapshot
from training.evaluate import blocked_metrics
from training.registry import BaselineFloor, Comparison, MlflowTarget, PromotionDecision

Log = Callable[[str], None]


def serving_catalogue(bundle: InterestModelBundle, snapshot: InteractionSnapshot
                      ) -> InterestModelBundle:
    """The bundle with the snapshot's items it does not know, as serving would hold it."""
    return with_new_items(bundle, [CatalogueItem(i.item_id, i.text, i.categories)
                                   for i in snapshot.items])


def scores_on_snapshot(bundle: InterestModelBundle, sequences: Sequence[UserSequence],
                       snapshot: InteractionSnapshot, batch_size: int = 256,
                       at: Sequence[float] | None = None) -> torch.Tensor:
    """Next-item scores of any version over the snapshot's catalogue, in the snapshot's item
    order: FloatTensor[U, N + 1], column 0 = -inf (lines up with the split's indices).
    ``at``: each request's time (the held-out events' times)."""
    return SnapshotScorer(bundle, snapshot, batch_size)(sequences, at)


class SnapshotScorer:
    """A version's scores over a snapshot's catalogue: the version's catalogue extended once
    with the snapshot's items it does not know (as serving would hold it), then any users
    scored in the snapshot's item order."""

    def __init__(self, bundle: InterestModelBundle, snapshot: InteractionSnapshot,
                 batch_size: int = 256) -> None:
        self.served = serving_catalogue(bundle, snapshot)
        self.item_ids = snapshot.item_ids
        self.columns = torch.tensor([self.served.index_of(i) - 1  # type: ignore[operator]
                                     for i in self.item_ids])
        self.batch_size = batch_size

    def __call__(self, sequences: Sequence[UserSequence], at: Sequence[float] | None = None
                 ) -> torch.Tensor:
        histories = [[self.item_ids[i - 1] for i in seq.items] for seq in sequences]
        times = [[float(t) for t in seq.times] for seq in sequences]
        request = None if at is None else [float(t) for t in at]
        step = self.batch_size
        chunks = [self.served.score_next_batch(
            histories[s:s + step], times[s:s + step],
            at=None if request is None else request[s:s + step])[:, self.columns]
            for s in range(0, len(histories), step)]
        scores = torch.cat(chunks)
        return torch.cat([torch.full((len(scores), 1), -math.inf), scores], dim=1)


def holdout_metrics(bundle: InterestModelBundle, split: LeaveOneOutSplit,
                    snapshot: InteractionSnapshot) -> dict[str, dict[str, float]]:
    """{"val": metrics, "test": metrics} of any version on the snapshot's split (users in
    blocks: a users x items score matrix is never held whole)."""
    if bundle.item_ids == snapshot.item_ids:
        return quality.bundle_ranking_metrics(bundle, split)
    scorer = SnapshotScorer(bundle, snapshot)
    parts = {"val": (split.valid_inputs(), split.valid_items, split.valid_times),
             "test": (split.test_inputs(), split.test_items, split.test_times)}
    result = {}
    for part, (inputs, targets, at) in parts.items():
        def score(start: int, stop: int, inputs: list[UserSequence] = inputs,
                  at: np.ndarray = at) -> torch.Tensor:
            return scorer(inputs[start:stop], list(at[start:stop]))

        result[part] = blocked_metrics(score, inputs, targets, len(snapshot.item_ids) + 1)
    return result


def describe_holdout(split: LeaveOneOutSplit, snapshot: InteractionSnapshot) -> str:
    return (f"this snapshot's holdout ({len(split.train)} users, last seq "
            f"{snapshot.last_seq})")


def promote_if_not_worse(target: MlflowTarget, version: str, bundle: InterestModelBundle,
                         split: LeaveOneOutSplit, snapshot: InteractionSnapshot,
                         force: bool = False, log: Log = print,
                         cache_dir: Path | None = None,
                         baselines: Mapping[str, BaselineResult] | None = None,
                         enforce_baselines: bool = True) -> PromotionDecision:
    """Score ``version`` (its ``bundle``) and the champion on ``split``; promote when the new
    version's validation NDCG@10 is not worse, and not below the best of ``baselines`` (the
    simple baselines evaluated on this same split; ``enforce_baselines=False``: reported
    only). Prints, and logs to the new version's MLflow run, the figures and the reason."""
    from app.ml.loader import load_version

    current = registry.champion(target)
    figures: dict[str, dict[str, dict[str, float]]] = {
        f"v{version}": holdout_metrics(bundle, split, snapshot)}
    comparison = None
    holdout = describe_holdout(split, snapshot)
    best = best_baseline(baselines or {})
    floor = None if best is None else BaselineFloor(
        best.label, best.val_ndcg(), figures[f"v{version}"]["val"]["ndcg@10"], enforce_baselines,
        holdout)
    if current is not None and str(current.version) != str(version) and not force:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                champ = load_version(target.tracking_uri, target.model_name, target.alias,
                                     cache_dir or Path(tmp), bundle.device.type)
            except BundleError as error:
                champ = None
                log(f"champion v{current.version} cannot be read by this code ({error}): "
                    "it is scored as 0")
            champion_figures = (holdout_metrics(champ.bundle, split, snapshot) if champ
                                else {"val": {"ndcg@10": 0.0}, "test": {"ndcg@10": 0.0}})
        figures[f"v{current.version}"] = champion_figures
        comparison = Comparison(figures[f"v{version}"]["val"]["ndcg@10"],
                                champion_figures["val"]["ndcg@10"], holdout)
    decision = registry.promote(target, version, force, comparison, floor)
    log(format_figures(figures, holdout, baselines))
    log(decision.reason)
    _log_decision(target, version, figures, decision, best)
    return decision


def format_figures(figures: dict[str, dict[str, dict[str, float]]], holdout: str,
                   baselines: Mapping[str, BaselineResult] | None = None) -> str:
    keys = ("ndcg@10", "hr@10", "ndcg@10_masked")
    lines = [f"gate, {holdout}:",
             f"{'version':<22}" + "".join(f"{'val ' + k:>22}" for k in keys)
             + "".join(f"{'test ' + k:>22}" for k in keys)]
    rows = dict(figures)
    rows.update({f"baseline {r.label}": r.metrics for r in (baselines or {}).values()})
    for name, parts in rows.items():
        lines.append(f"{name:<22}" + "".join(_cell(parts["val"].get(k)) for k in keys)
                     + "".join(_cell(parts["test"].get(k)) for k in keys))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return f"{'-':>22}" if value is None else f"{float(value):>22.4f}"


def _log_decision(target: MlflowTarget, version: str,
                  figures: dict[str, dict[str, dict[str, float]]],
                  decision: PromotionDecision, best: BaselineResult | None = None) -> None:
    """Both versions' holdout figures, the best baseline's and the reason, on the new
    version's run and tags."""
    client = target.client()
    model_version = client.get_model_version(target.model_name, version)
    new_name = f"v{version}"
    metrics = {}
    for name, parts in figures.items():
        role = "new" if name == new_name else "champion"
        for part, values in parts.items():
            for key, value in values.items():
                metrics[registry.metric_key(f"gate.{role}.{part}.{key}")] = float(value)
    floor_tags = {}
    if best is not None:
        for part, values in best.metrics.items():
            for key, value in values.items():
                metrics[registry.metric_key(f"gate.baseline.{part}.{key}")] = float(value)
        floor_tags = {"gate_baseline": best.label,
                      "gate_baseline_val_ndcg_at_10": f"{best.val_ndcg():.6f}"}
    if model_version.run_id:
        mlflow.set_tracking_uri(target.tracking_uri)
        with mlflow.start_run(run_id=model_version.run_id):
            mlflow.log_metrics(metrics)
            mlflow.set_tags({"gate.reason": decision.reason[:5000],
                             "gate.promoted": str(decision.promoted),
                             "gate.champion": decision.previous or "none",
                             **{k.replace("gate_", "gate.", 1): v
                                for k, v in floor_tags.items()}})
    for key, value in {"gate_promoted": str(decision.promoted),
                       "gate_reason": decision.reason[:5000],
                       "gate_champion": decision.previous or "none", **floor_tags}.items():
        client.set_model_version_tag(target.model_name, version, key, value)
