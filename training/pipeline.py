"""``run_training``: a snapshot of the store -> recommender -> drift head -> topics -> bundle
-> evaluation through the bundle -> outputs -> MLflow (log, and register / promote when asked:
promotion goes through the fair gate of ``training.gate``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import mlflow
import torch

from app.core.config import PROJECT_ROOT, get_settings
from app.ml.bundle import DriftSettings, InterestModelBundle
from app.ml.device import resolve_device
from app.ml.topics import TopicTable, build_topics
from app.store.db import make_engine
from training import baselines, budget, plan, quality, registry, speed
from training.baselines import BaselineResult
from training.blend import BlendFit, fit_blend
from training.config import TrainingConfig
from training.data.store import InteractionSnapshot, read_snapshot
from training.drift.bocpd_fit import DriftCatalogue
from training.drift.heldout import heldout_scorer
from training.drift.pipeline import DriftResult, train_and_evaluate_drift
from training.recommender import RecommenderResult, prepare_split, train_recommender
from training.registry import MlflowTarget, PromotionDecision

Log = Callable[[str], None]
PATH_GAP_TOLERANCE = 2e-3  # bundle vs trainer metrics: float/bf16 noise only
CHECKPOINT_DIR = "var/checkpoints"  # <this>/<run name>/<fingerprint>: resumable stages


@dataclass
class TrainingReport:
    bundle_dir: Path
    quality: dict[str, Any]  # the quality.json document
    trainer_metrics: dict[str, Any]  # the trainers' own figures (for the path check)
    bundle_metrics: dict[str, Any]  # the same figures through the bundle
    fingerprint: str
    snapshot: dict[str, Any] = field(default_factory=dict)  # what the fingerprint describes
    run_id: str | None = None
    version: str | None = None
    promotion: PromotionDecision | None = None
    outputs: dict[str, Path] = field(default_factory=dict)
    baselines: dict[str, BaselineResult] = field(default_factory=dict)  # simple baselines


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def dataset_fingerprint(dataset: InteractionSnapshot, config: TrainingConfig) -> str:
    """The data a model saw: the snapshot's fingerprint, plus the user subset when there is
    one."""
    users = config.recommender.max_users
    if users is None:
        return dataset.fingerprint
    return hashlib.sha256(f"{dataset.fingerprint};first_users={users}".encode()).hexdigest()


def item_topics(dataset: InteractionSnapshot, embeddings: torch.Tensor, config: TrainingConfig
                ) -> TopicTable:
    """Topics from the items' categories when most items have some (each item filed under its
    least common category), otherwise k-means clusters of the item embeddings;
    embeddings: FloatTensor[N + 1, D]."""
    categories = [item.categories for item in dataset.items]
    return build_topics(embeddings[1:].numpy(), categories, [i.title for i in dataset.items],
                        config.run.topic_clusters, config.run.seed)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def checkpoint_dir(config: TrainingConfig, fingerprint: str) -> Path:
    """Where a run of ``config`` on the data ``fingerprint`` keeps its checkpoints."""
    return PROJECT_ROOT / CHECKPOINT_DIR / config.run.name / fingerprint[:16]


def import_seconds(config: TrainingConfig) -> float | None:
    """``total_seconds`` of the import benchmark named by ``run.import_results``, if any."""
    if not config.run.import_results:
        return None
    path = PROJECT_ROOT / config.run.import_results
    try:
        return float(json.loads(path.read_text())["total_seconds"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def load_snapshot(database_url: str | None = None, until: datetime | None = None
                  ) -> InteractionSnapshot:
    """Read the store (``DRIFTREC_DATABASE_URL`` unless given), events up to ``until``."""
    engine = make_engine(database_url or get_settings().database_url)
    try:
        return read_snapshot(engine, until)
    finally:
        engine.dispose()


def build_bundle(rec: RecommenderResult, drift: DriftResult, topics: TopicTable,
                 fingerprint: str, config: TrainingConfig, device: torch.device,
                 blend: BlendFit | None = None) -> InterestModelBundle:
    settings = DriftSettings(threshold=float(drift.threshold),
                             min_events=config.drift.min_events, cooldown=config.drift.cooldown,
                             max_events=config.drift.splice.max_unspliced,
                             kind_threshold=float(drift.kind_threshold))
    return InterestModelBundle(
        encoder=rec.encoder.to(device), sequence_model=rec.model.to(device),
        drift_detector=drift.detector.to(device), drift=settings, item_ids=list(rec.item_ids),
        topics=topics, dataset_fingerprint=fingerprint, training_config=config.to_dict(),
        metrics={"recommender": rec.metrics, "drift": drift.metrics,
                 "drift_unseen": drift.metrics_unseen},
        blend=blend.blend if blend is not None and blend.blend.active else None,
        log_popularity=(blend.log_popularity if blend is not None and blend.blend.active
                        else None),
    )


class DriftParityError(RuntimeError):
    """The bundle would serve drift decisions other than the ones the run evaluated."""


def evaluate_bundle(bundle: InterestModelBundle, rec: RecommenderResult, drift: DriftResult,
                    dataset: InteractionSnapshot, config: TrainingConfig, log: Log
                    ) -> dict[str, Any]:
    """Ranking and drift metrics recomputed through the bundle; warns on a path gap.

    The drift decisions are made the way serving makes them (quality.served_traces: the
    detector's incremental engine, or its replay when it has none, then the bundle's rule)
    and compared, case by case, with the decisions evaluation made; ``parity`` says which
    differ (run_training refuses to go on when any does)."""
    _, split = prepare_split(dataset, config.recommender.max_users,
                             config.recommender.basket_holdout)
    ranking = quality.bundle_ranking_metrics(bundle, split)
    parity: dict[str, quality.DecisionParity] = {}
    served: dict[str, dict[str, float | None]] = {}
    for group in ("evaluation", "evaluation_b"):
        cases = drift.cases[group]
        traces = quality.served_traces(bundle, cases)
        served[group] = quality.bundle_drift_metrics(bundle, cases, config.drift.margin,
                                                     traces)
        if group in drift.traces:
            parity[group] = quality.decision_parity(bundle, traces, drift.decisions(group),
                                                    drift.traces[group])
    drift_ours, drift_b_ours = served["evaluation"], served["evaluation_b"]
    # what the bundle serves: the model with its blend when it has one (training.blend)
    served = rec.metrics.get("served", rec.metrics["ours"])
    gaps = {
        "test": quality.max_gap(ranking["test"], served["test"], quality.RANKING_KEYS),
        "drift": quality.max_gap(drift_ours, drift.metrics["ours"], quality.DRIFT_KEYS),
    }
    # The served detector on the generator-B cases too (the evaluated seen_b row).
    if "seen_b" in drift.by_protocol:
        gaps["drift_b"] = quality.max_gap(drift_b_ours, drift.by_protocol["seen_b"]["ours"],
                                          quality.DRIFT_KEYS)
    for name, gap in gaps.items():
        status = "ok" if gap <= PATH_GAP_TOLERANCE else "MISMATCH"
        log(f"bundle vs trainer ({name}): largest gap {gap:.5f} [{status}]")
    for group, check in parity.items():
        log(f"served vs evaluated drift decisions ({group}): {len(check.differing)} of "
            f"{check.cases} cases differ, {len(check.noise)} at float noise "
            f"[{'ok' if check.ok else 'MISMATCH'}]")
    return {"ranking": ranking, "drift_ours": drift_ours, "gaps": gaps,
            "drift_b_ours": drift_b_ours, "parity": parity}


def check_drift_parity(checked: dict[str, Any]) -> None:
    """Refuse a bundle whose served drift decisions differ from the evaluated ones: its
    report would describe another detector than the one it serves."""
    bad = {group: check.differing for group, check in checked.get("parity", {}).items()
           if not check.ok}
    if bad:
        raise DriftParityError(
            "the bundle's served drift decisions differ from the evaluated ones on cases "
            + "; ".join(f"{group}: {cases[:10]}" for group, cases in bad.items())
            + " (not registered)")


def write_outputs(bundle: InterestModelBundle, report: dict[str, Any], drift: DriftResult,
                  tables: str, config: TrainingConfig) -> dict[str, Path]:
    """Bundle, quality.json, quality.txt and drift_cases.json under the run's output folder;
    quality.json is also published to ``run.quality_json`` for a full-data run only."""
    out = PROJECT_ROOT / config.run.output_dir / config.run.name
    if out.exists():
        shutil.rmtree(out)
    paths = {"bundle": bundle.save(out / "bundle"), "quality": out / "quality.json",
             "tables": out / "quality.txt", "drift_cases": out / "drift_cases.json"}
    paths["quality"].write_text(json.dumps(report, indent=2) + "\n")
    paths["tables"].write_text(tables + "\n")
    drift.save_cases(paths["drift_cases"])
    if config.run.quality_json and config.recommender.max_users is None:
        published = PROJECT_ROOT / config.run.quality_json
        published.parent.mkdir(parents=True, exist_ok=True)
        published.write_text(json.dumps(report, indent=2) + "\n")
        paths["published"] = published
    return paths


def log_to_mlflow(report: TrainingReport, rec: RecommenderResult, drift: DriftResult,
                  config: TrainingConfig, target: MlflowTarget, register: bool) -> str | None:
    """Log the run (params, stepped history, metrics, tables, case list); register the bundle
    as a new model version when asked. Returns the new version number, if any."""
    experiment_id = registry.use_tracking(target, config.run.experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=config.run.name) as run:
        report.run_id = run.info.run_id
        mlflow.log_params(registry.flatten(config.to_dict()))
        mlflow.set_tags({registry.FINGERPRINT_TAG: report.fingerprint,
                         "config_digest": config.digest(),
                         **registry.snapshot_tags(report.snapshot)})
        registry.log_history(rec.history)
        registry.log_metrics_tree({"trainer": rec.metrics, "bundle": report.bundle_metrics})
        registry.log_metrics_tree({"drift": drift.metrics, "drift_unseen": drift.metrics_unseen,
                                   "timing": {**rec.timings, **drift.timings}})
        registry.log_metrics_tree(baselines.flat_metrics(report.baselines))
        mlflow.set_tags(baselines.knob_tags(report.baselines))
        mlflow.set_tags({**plan.plan_tags(report.quality), **budget.budget_tags(report.quality),
                         **speed.speed_tags(report.quality.get("training_step", {}))})
        for key in ("quality", "tables", "drift_cases"):
            mlflow.log_artifact(str(report.outputs[key]))
        model_uri = registry.log_bundle_model(report.outputs["bundle"])
    if not register:
        return None
    test = report.bundle_metrics["ranking"]["test"]
    headline = {"val_ndcg@10": report.bundle_metrics["ranking"]["val"]["ndcg@10"],
                "test_ndcg@10": test["ndcg@10"], "test_hr@10": test["hr@10"],
                "drift_f1": float(report.quality["drift"]["ours"]["f1"] or 0.0)}
    if report.quality.get("drift_unseen"):
        headline["drift_unseen_f1"] = float(report.quality["drift_unseen"]["ours"]["f1"] or 0.0)
    headline.update(baselines.flat_metrics(report.baselines))
    version = registry.register(target, model_uri, report.fingerprint, headline,
                                {"config": config.run.name, "run_id": run.info.run_id,
                                 **registry.snapshot_tags(report.snapshot),
                                 **baselines.knob_tags(report.baselines),
                                 **budget.budget_tags(report.quality)})
    return str(version.version)


def run_training(config: TrainingConfig, device: str = "auto", register: bool = False,
                 promote: bool = False, force: bool = False, progress: bool = True,
                 target: MlflowTarget | None = None, log: Log = print,
                 snapshot: InteractionSnapshot | None = None, database_url: str | None = None,
                 until: datetime | None = None, resume: bool = True, ray_workers: int = 0,
                 ray_address: str | None = None) -> TrainingReport:
    """Train on a snapshot of the store (read here unless given), evaluate through the bundle,
    write outputs, log to MLflow, register, and promote through the fair gate
    (``training.gate``: new version and champion scored on this snapshot's holdout).

    The encoder and the sequence models checkpoint under ``var/checkpoints/<run>/<data>/``; a
    run of the same config on the same data resumes from there (``resume=False``: start over).
    The checkpoints are removed once the run's outputs are written.

    Before training, the plan (``training.plan``) fitting ``run.memory_gb`` is printed and,
    with ``recommender.plan: auto``, its overrides applied; ``run.time_budget_minutes`` stops
    the stages at their shares of it (``training.budget``)."""
    start = time.perf_counter()
    deadline = budget.deadline_for(config.run.time_budget_minutes,
                                   shares=config.run.budget_shares)

    def done(stage: str) -> None:
        log(f"[{time.perf_counter() - start:7.1f} s] {stage}")

    torch_device = resolve_device(device)
    target = target or registry.default_target()
    seed = config.run.seed
    dataset = snapshot if snapshot is not None else load_snapshot(database_url, until)
    if dataset.n_events == 0:
        raise ValueError("the store holds no events to train on: import some first")
    fingerprint = dataset_fingerprint(dataset, config)
    summary = {**dataset.summary(), "max_users": config.recommender.max_users}
    log(f"snapshot: {summary['items']} items, {summary['users']} users, "
        f"{summary['events']} events (last seq {summary['last_seq']}), "
        f"fingerprint {fingerprint[:12]}")
    done("store snapshot read")
    planned = plan.plan_training(
        plan.catalogue_size(dataset, config.recommender.max_users), config.recommender,
        config.run.memory_gb * 1024, None if deadline is None else deadline.seconds,
        plan.measure_flop_rate(config.recommender.hidden_size, torch_device),
        config.run.budget_shares)
    for line in plan.describe_plan(planned, config.recommender):
        log(line)
    config = dataclasses.replace(config,
                                 recommender=plan.apply_plan(config.recommender, planned))
    log(f"training '{config.run.name}' on {torch_device} (seed {seed})")
    checkpoints = checkpoint_dir(config, fingerprint)
    if not resume and checkpoints.exists():
        shutil.rmtree(checkpoints)
    log(f"checkpoints: {checkpoints}")
    rec = train_recommender(config.recommender, dataset, torch_device, seed, progress,
                            checkpoint_dir=checkpoints, log=log, ray_workers=ray_workers,
                            ray_address=ray_address, deadline=deadline)
    done("recommender trained")
    vocab, split = prepare_split(dataset, config.recommender.max_users,
                                 config.recommender.basket_holdout)
    simple = baselines.evaluate_baselines(split, vocab.n_items)
    best = baselines.best_baseline(simple)
    done(f"simple baselines fitted and evaluated (best on validation: "
         f"{best.label if best else '-'})")
    repeat = simple.get("repeat")
    blend = fit_blend(rec.model, split, vocab.n_items, torch_device,
                      tau=repeat.value if repeat is not None and repeat.value is not None
                      else math.inf, enabled=config.recommender.repeat_blend)
    rec.metrics["served"] = blend.metrics
    done(f"ranker blend fitted on validation: model weight {blend.blend.model_weight:g}, "
         f"repeat weight {blend.blend.repeat_weight:g}, "
         f"popularity weight {blend.blend.popularity_weight:g} (tau "
         f"{baselines.format_value(blend.blend.tau)}); val ndcg@10 "
         f"{blend.metrics['val']['ndcg@10']:.4f} against the model alone "
         f"{rec.metrics['ours']['val']['ndcg@10']:.4f}")
    heldout = (heldout_scorer(split, config.recommender.model_config(), rec.model.n_items,
                              rec.item_text_embeddings, config.recommender.train_config(),
                              config.drift, torch_device, seed, progress,
                              deadline=budget.stage_deadline(deadline, "heldout"))
               if config.drift.unseen_view else None)
    # The topics come first: a topic-reading drift kind (bocpd) and the topic baselines read
    # the items' categories, or these clusters where the catalogue has none.
    topics = item_topics(dataset, rec.item_text_embeddings, config)
    catalogue = DriftCatalogue([tuple(item.categories) for item in dataset.items], topics)
    drift = train_and_evaluate_drift(rec.model, rec.item_text_embeddings, split.train,
                                     config.drift, seed, torch_device, progress, heldout,
                                     catalogue)
    done("drift head trained and compared "
         f"({', '.join(f'{k} {v:.0f} s' for k, v in drift.timings.items())})")
    bundle = build_bundle(rec, drift, topics, fingerprint, config, torch_device, blend)
    bundle.smoke_test()
    checked = evaluate_bundle(bundle, rec, drift, dataset, config, log)
    check_drift_parity(checked)
    done("bundle built and evaluated")
    drift_rows = {**drift.metrics, "ours": checked["drift_ours"]}
    unseen_rows = dict(drift.metrics_unseen)
    report_doc = quality.quality_table(checked["ranking"]["test"], rec.metrics, drift_rows,
                                       time.perf_counter() - start, device_name(torch_device),
                                       unseen_rows, dataset=quality.describe_snapshot(summary),
                                       anchors=config.run.anchors)
    report_doc["drift_kind"] = config.drift.kind  # the detector kind this version serves
    report_doc["stage_seconds"] = {
        **{k: round(v, 1) for k, v in rec.timings.items() if k.endswith("_s")},
        "drift_s": round(drift.seconds, 1),
        **{f"drift_{k}_s": round(v, 1) for k, v in drift.timings.items()}}
    report_doc["epochs"] = {name: {"run": int(rec.timings.get(f"{name}_epochs", 0)),
                                   "best": int(epoch)} for name, epoch in rec.best_epochs.items()}
    report_doc["training_step"] = rec.speed  # bf16 and compile as they ran, for ablations
    report_doc["baselines"] = baselines.report(simple)
    report_doc["blend"] = {**blend.blend.to_json(), "active": blend.blend.active,
                           "grid_val_ndcg@10": {k: round(v, 6) for k, v in blend.grid.items()}}
    if blend.blend.active:  # the served figure is the blend's: the model alone beside it
        report_doc["models"]["ours_model"] = quality.pick_ranking(rec.metrics["ours"]["test"])
    report_doc["peak_rss_mib"] = round(peak_rss_mib(), 1)
    report_doc["plan"] = plan.plan_report(planned)
    report_doc["memory"] = plan.memory_report(report_doc["peak_rss_mib"], planned, log)
    report_doc["time_budget"] = budget.budget_report(deadline, log)
    seconds = import_seconds(config)
    if seconds is not None:
        report_doc["import_seconds"] = seconds
    tables = (quality.format_tables(report_doc, drift_rows, unseen_rows) + "\n\n"
              + baselines.format_table(simple, checked["ranking"]))
    log(tables)
    report = TrainingReport(Path(), report_doc, rec.metrics, checked, fingerprint, summary,
                            baselines=simple)
    report.outputs = write_outputs(bundle, report_doc, drift, tables, config)
    report.bundle_dir = report.outputs["bundle"]
    shutil.rmtree(checkpoints, ignore_errors=True)  # the outputs are written: nothing to resume
    report.version = log_to_mlflow(report, rec, drift, config, target, register)
    done(f"logged to MLflow ({target.tracking_uri}), run {report.run_id}; "
         f"peak RSS {peak_rss_mib():.0f} MiB")
    if report.version is not None:
        log(f"registered {target.model_name} v{report.version}")
        if promote:
            from training.gate import promote_if_not_worse

            report.promotion = promote_if_not_worse(
                target, report.version, bundle, split, dataset, force, log, baselines=simple,
                enforce_baselines=config.run.baseline_gate)
    return report
