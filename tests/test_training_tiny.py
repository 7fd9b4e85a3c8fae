"""The tiny config end to end: train, evaluate through the bundle, log, register, promote, load
the champion back through app.ml.loader and score. Plus promotion rules, config and CLI checks.

The tiny run (about 30 s of CPU) is the suite's shared ``tiny_model`` fixture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest

from app.ml.bundle import InterestModelBundle
from app.ml.loader import load_version
from training import registry
from training.__main__ import main
from training.config import ConfigError, load_config, parse_config
from training.quality import DRIFT_KEYS, RANKING_KEYS
from training.registry import MlflowTarget

HISTORY = ["50", "172", "181", "1", "7", "100", "121", "258", "288", "294", "300", "313"]
TIMES = [880_000_000.0 + 600.0 * i for i in range(len(HISTORY))]


@pytest.fixture(scope="module")
def tiny(tiny_model: Any) -> Any:
    """The suite's one tiny run (tests/conftest.py: report, target, root), trained on the CPU
    with configs/tiny.yaml into a temporary SQLite MLflow store, registered and promoted."""
    return tiny_model


def test_tiny_run_registers_promotes_and_writes_the_quality_table(tiny: Any) -> None:
    report = tiny.report
    assert report.version == "1"
    assert report.promotion is not None and report.promotion.promoted
    champion = registry.champion(tiny.target)
    assert champion is not None and str(champion.version) == "1"
    assert champion.tags["dataset_fingerprint"] == report.fingerprint
    assert float(champion.tags["val_ndcg_at_10"]) == pytest.approx(
        report.bundle_metrics["ranking"]["val"]["ndcg@10"], abs=1e-6)
    doc = report.quality
    blend = doc["blend"]  # the served ranker's blend, fitted on validation
    assert set(doc["models"]) == {"ours", "sasrec_id", "pop"} | (
        {"ours_model"} if blend["active"] else set())
    assert blend["grid_val_ndcg@10"]["1,0,0"] <= report.bundle_metrics["ranking"]["val"][
        "ndcg@10"] + 1e-6  # never below the model alone on validation
    assert report.bundle_metrics["gaps"]["test"] <= 2e-3  # the bundle serves what was fitted
    assert all(set(row) == set(RANKING_KEYS) for row in doc["models"].values())
    assert set(doc["drift"]) == {"ours", "adwin", "page_hinkley", "kernel_cpd",
                                 "bocpd_topics_h100", "glr_topics_w40"}
    assert all(set(row) == set(DRIFT_KEYS) for row in doc["drift"].values())
    # The tiny run never publishes to bench/results/quality.json.
    assert "published" not in report.outputs
    assert report.outputs["quality"].is_relative_to(tiny.root)


def test_tiny_run_reports_the_simple_baselines_and_their_floor(tiny: Any) -> None:
    report = tiny.report
    assert set(report.baselines) == {"pop", "repeat", "cooc"}
    assert set(report.quality["baselines"]) == {"pop", "repeat", "cooc"}
    assert report.quality["baselines"]["repeat"]["knob"].keys() == {"tau"}
    tags = registry.champion(tiny.target).tags
    for name in ("pop", "repeat", "cooc"):
        for key in ("ndcg_at_10_valid", "hr_at_10_valid", "ndcg_at_10_test", "hr_at_10_test"):
            assert f"baseline_{name}_{key}" in tags
    assert tags["baseline_cooc_window"] == report.quality["baselines"]["cooc"]["knob"]["window"]
    best = max(report.baselines.values(), key=lambda r: r.val_ndcg())
    assert tags["gate_baseline"] == best.label
    # configs/tiny.yaml reports the floor without enforcing it (run.baseline_gate: false).
    if float(tags["val_ndcg_at_10"]) < best.val_ndcg():
        assert "not enforced" in tags["gate_reason"]
    assert "simple baselines" in report.outputs["tables"].read_text()


def test_bundle_path_reproduces_the_trainers_figures(tiny: Any) -> None:
    gaps = tiny.report.bundle_metrics["gaps"]
    assert gaps["test"] < 2e-3 and gaps["drift"] < 2e-3


def test_run_logs_stepped_history_and_the_artifacts(tiny: Any) -> None:
    client = tiny.target.client()
    run = client.get_run(tiny.report.run_id)
    assert run.data.params["recommender.max_users"] == "40"
    assert client.get_metric_history(run.info.run_id, "ours.train_loss")[0].step == 1
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"quality.json", "quality.txt", "drift_cases.json"} <= names


def test_champion_loads_through_the_loader_and_scores(tiny: Any) -> None:
    t = tiny.target
    # The loader must use the URI it is given, never MLflow's process-wide one: point that
    # at a store MLflow 3 refuses, so any use of it fails.
    mlflow.set_tracking_uri("file:///nonexistent/store")
    mlflow.set_registry_uri("file:///nonexistent/store")
    try:
        loaded = load_version(t.tracking_uri, t.model_name, t.alias, tiny.root / "cache", "cpu")
    finally:
        mlflow.set_tracking_uri(t.tracking_uri)
        mlflow.set_registry_uri(t.tracking_uri)
    assert loaded.version == "1"
    bundle = loaded.bundle
    scores = bundle.score_next(HISTORY, TIMES)
    assert scores.shape == (len(bundle.item_ids),) == (1682,)
    assert np.isfinite(scores).all()
    assert np.array_equal(scores, bundle.score_next(HISTORY, TIMES))
    local = InterestModelBundle.load(tiny.report.bundle_dir, "cpu")
    assert np.allclose(scores, local.score_next(HISTORY, TIMES), atol=1e-6)
    bundle.smoke_test()


def test_registered_version_loads_as_a_pyfunc(tiny: Any) -> None:
    mlflow.set_tracking_uri(tiny.target.tracking_uri)
    mlflow.set_registry_uri(tiny.target.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{tiny.target.model_name}@champion")
    top = model.predict([{"item_ids": HISTORY, "timestamps": TIMES}])
    assert len(top) == 1 and len(top[0]) == 10
    assert not set(top[0]) & set(HISTORY)


def test_promotion_keeps_a_better_champion_unless_forced(tiny: Any) -> None:
    target = MlflowTarget(tiny.target.tracking_uri, tiny.target.artifact_root, "promotion-test")
    source = tiny.target.client().get_model_version(tiny.target.model_name, "1").source
    fp = tiny.report.fingerprint

    def version(score: float, fingerprint: str = fp) -> str:
        return str(registry.register(target, source, fingerprint,
                                     {"val_ndcg@10": score}).version)

    assert registry.promote(target, version(0.05)).promoted
    worse = registry.promote(target, version(0.04))
    assert not worse.promoted and "worse" in worse.reason
    other_data = registry.promote(target, version(0.09, "another-dataset"))
    assert not other_data.promoted and "different dataset" in other_data.reason
    assert str(registry.champion(target).version) == "1"
    assert registry.promote(target, "2", force=True).promoted
    assert str(registry.champion(target).version) == "2"
    better = registry.promote(target, version(0.06))
    assert better.promoted and str(registry.champion(target).version) == "4"


def test_ensure_champion_exits_quickly_when_there_is_one(
        tiny: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("training.registry.default_target", lambda: tiny.target)
    assert main(["ensure-champion", "--config", "configs/tiny.yaml"]) == 0
    assert "is version 1" in capsys.readouterr().out


def test_cli_rejects_bad_arguments_and_configs(tmp_path: Path) -> None:
    assert main(["train", "--config", "configs/tiny.yaml", "--promote"]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("recommender:\n  hidden_sise: 64\n")
    assert main(["train", "--config", str(bad)]) == 2


def test_config_files_parse_and_unknown_or_mistyped_keys_fail() -> None:
    full, tiny = load_config("configs/ml100k.yaml"), load_config("configs/tiny.yaml")
    assert full.recommender.max_users is None and full.run.quality_json
    assert tiny.run.quality_json is None and tiny.recommender.max_epochs == 1
    assert full.digest() != tiny.digest()
    with pytest.raises(ConfigError, match="sections"):
        parse_config({"trainer": {}})
    with pytest.raises(ConfigError, match="unknown run settings"):
        parse_config({"run": {"sed": 1}})
    with pytest.raises(ConfigError, match="seed must be int"):
        parse_config({"run": {"seed": "2020"}})
    with pytest.raises(ConfigError, match="dropout must be float"):
        parse_config({"recommender": {"dropout": "high"}})
    with pytest.raises((ValueError, TypeError)):
        parse_config({"drift": {"splice": {"ramp_len": 3}}})
