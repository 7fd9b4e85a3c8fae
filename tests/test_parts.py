"""Model parts: bundles of any registered kinds, format-1 bundles, the registry's checks, and
the layering of app.ml (shipped with every registered version)."""

from __future__ import annotations

import ast
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from app.core.config import PROJECT_ROOT
from app.ml.bundle import MODEL_FORMAT, BundleError, InterestModelBundle, manifest_parts
from app.ml.drift_head import DriftHead, causal_window_mean, event_surprise
from app.ml.parts import (
    DEFAULT_KINDS,
    DriftDetector,
    DriftTrace,
    ItemEncoder,
    NextItemScorer,
    get_kind,
    kind_of,
    register_part,
    registered_kinds,
)
from app.services.inference import Inference

FIXTURES = Path(__file__).parent / "fixtures"
FORMAT1 = FIXTURES / "bundle_format1"  # written by the format-1 code (make_bundle_format1.py)
EXPECTED = json.loads((FIXTURES / "bundle_format1_expected.json").read_text())
HISTORY: list[str] = EXPECTED["history"]
# Settings added to the scorer's config after format 1 (the attention bias), with the values a
# format-1 scorer loads with: off.
NEW_SCORER_SETTINGS = {"time_bias": "off", "position_bias": False, "bias_buckets": 64}


def same_as_format1_code(got: np.ndarray, key: str) -> bool:
    """Equal to what the format-1 code computed, to 1e-6: it ran on another machine, whose
    CPU's vector kernels may round a float32's last bit differently (a wrong weight, layer or
    feature moves these numbers by orders of magnitude more)."""
    return np.allclose(got, np.asarray(EXPECTED[key], dtype=np.float32), rtol=1e-6, atol=1e-7)
TIMES: list[float] = EXPECTED["times"]


# ------------------------------------------------------- a drift detector of another kind
@register_part("drift", "surprise-zscore", part_format=1)
class SurpriseZScore(nn.Module):
    """A statistical detector: how unusual each event's surprise is against the user's own
    past (a causal z-score), through a logistic link. No weights: config only, no files."""

    def __init__(self, window: int = 30, offset: float = 2.0, scale: float = 0.5) -> None:
        super().__init__()
        self.window, self.offset, self.scale = window, offset, scale

    def traces(self, scorer: NextItemScorer, item_idx: torch.Tensor,
               timestamps: torch.Tensor) -> DriftTrace:
        surprise = event_surprise(scorer, item_idx, timestamps)
        x = surprise.unsqueeze(-1)
        mean, count = causal_window_mean(x, self.window, 1)
        square, _ = causal_window_mean(x * x, self.window, 1)
        std = (square - mean * mean).clamp(min=0).sqrt().squeeze(-1) + 1e-3
        z = ((surprise - mean.squeeze(-1)) / std) * (count > 1)
        return DriftTrace(torch.sigmoid((z - self.offset) / self.scale), surprise)

    def save_part(self, directory: Path) -> dict[str, Any]:
        return {"window": self.window, "offset": self.offset, "scale": self.scale}

    @classmethod
    def load_part(cls, directory: Path, config: dict[str, Any], part_format: int,
                  device: torch.device) -> SurpriseZScore:
        return cls(**config).to(device)


@pytest.fixture(scope="module")
def format1() -> InterestModelBundle:
    return InterestModelBundle.load(FORMAT1, "cpu")


def _manifest(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "manifest.json").read_text())


# ------------------------------------------------------------------ format-1 bundles
def test_a_format1_bundle_loads_and_computes_what_the_format1_code_did(
        format1: InterestModelBundle) -> None:
    assert _manifest(FORMAT1)["model_format"] == 1 and "parts" not in _manifest(FORMAT1)
    assert same_as_format1_code(format1.score_next(HISTORY, TIMES), "scores")
    [(probs, surprise)] = format1.drift_traces_batch([HISTORY], [TIMES])
    assert same_as_format1_code(probs, "drift_probabilities")
    assert same_as_format1_code(surprise, "surprise")
    assert same_as_format1_code(format1.encoder.embed(["a film"])[0].numpy(), "embedding")
    assert format1.item_topic("cold1") == EXPECTED["cold1_topic"]  # a cold-start row survived
    assert format1.drift.kind_threshold == 0.25
    format1.smoke_test()
    assert {role: kind_of(role, part).kind for role, part in format1.parts().items()} == \
        DEFAULT_KINDS


def test_a_format1_bundle_resaved_is_format2_with_its_parts_and_the_same_numbers(
        format1: InterestModelBundle, tmp_path: Path) -> None:
    directory = format1.save(tmp_path / "b")
    manifest = _manifest(directory)
    assert manifest["model_format"] == MODEL_FORMAT == 2
    assert {role: (e["kind"], e["format"], e["files"]) for role, e in manifest["parts"].items()} \
        == {"encoder": ("minilm", 1, ["encoder"]),
            "scorer": ("sasrec-text-time", 1, ["sequence_model.pt"]),
            "drift": ("feature-gru", 1, ["drift_head.pt"])}
    # the parts' configs are the format-1 manifest's keys, moved under "parts" (the scorer's
    # with the settings added since, at their off values)
    resaved = manifest["parts"]
    sequence_config = resaved["scorer"]["config"]["sequence_config"]
    assert {k: sequence_config.pop(k) for k in NEW_SCORER_SETTINGS} == NEW_SCORER_SETTINGS
    assert manifest_parts(_manifest(FORMAT1)) == resaved
    assert sorted(p.name for p in directory.iterdir()) == sorted(p.name for p in
                                                                 FORMAT1.iterdir())
    loaded = InterestModelBundle.load(directory)
    assert np.array_equal(loaded.score_next(HISTORY, TIMES), format1.score_next(HISTORY, TIMES))
    assert np.array_equal(loaded.drift_probabilities(HISTORY, TIMES),
                          format1.drift_probabilities(HISTORY, TIMES))


def test_a_format1_manifest_missing_its_keys_is_refused(tmp_path: Path) -> None:
    directory = Path(shutil.copytree(FORMAT1, tmp_path / "b"))
    manifest = _manifest(directory)
    del manifest["drift_head"]
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="does not match"):
        InterestModelBundle.load(directory)


# ---------------------------------------------------- another drift kind beside the first
def test_a_drift_detector_of_another_kind_is_saved_loaded_and_served_beside_the_default(
        format1: InterestModelBundle, tmp_path: Path) -> None:
    assert {"feature-gru", "surprise-zscore"} <= set(registered_kinds("drift"))
    zscore = dataclasses.replace(format1, drift_detector=SurpriseZScore(offset=1.5))
    assert isinstance(zscore.drift_detector, DriftDetector)
    directory = zscore.save(tmp_path / "zscore")
    entry = _manifest(directory)["parts"]["drift"]
    assert entry == {"kind": "surprise-zscore", "format": 1, "files": [],
                     "config": {"window": 30, "offset": 1.5, "scale": 0.5}}
    assert not (directory / "drift_head.pt").exists()

    default = InterestModelBundle.load(format1.save(tmp_path / "default"))
    loaded = InterestModelBundle.load(directory)
    assert isinstance(loaded.drift_detector, SurpriseZScore)
    assert isinstance(default.drift_detector, DriftHead)
    loaded.smoke_test()
    default.smoke_test()

    probs, change = loaded.detect_drift(HISTORY, TIMES)
    assert probs.shape == (len(HISTORY),) and ((probs >= 0) & (probs <= 1)).all()
    assert np.allclose(probs[:6], loaded.drift_probabilities(HISTORY[:6], TIMES[:6]), atol=1e-5)
    assert not np.allclose(probs, default.drift_probabilities(HISTORY, TIMES))
    # both detectors read the same scorer: the surprise evidence is the same
    [(_, s_zscore)] = loaded.drift_traces_batch([HISTORY], [TIMES])
    [(_, s_default)] = default.drift_traces_batch([HISTORY], [TIMES])
    np.testing.assert_allclose(s_zscore, s_default, rtol=1e-5, atol=1e-5)
    assert change is None or 0 <= change.index < len(HISTORY)
    # and serving drives it through the same bundle API
    served = Inference(loaded, max_batch=64)
    np.testing.assert_allclose(served.replay_drift(HISTORY, TIMES)[0], probs, atol=1e-6)
    # the scoring parts are untouched by the detector swap
    assert np.array_equal(loaded.score_next(HISTORY, TIMES), default.score_next(HISTORY, TIMES))


def test_parts_meet_their_protocols(format1: InterestModelBundle) -> None:
    assert isinstance(format1.encoder, ItemEncoder)
    assert isinstance(format1.sequence_model, NextItemScorer)
    assert isinstance(format1.drift_detector, DriftDetector)
    assert format1.drift_head is format1.drift_detector  # the old attribute name still reads


# ------------------------------------------------------------------ registry refusals
def _edit_drift_entry(format1: InterestModelBundle, tmp_path: Path, **changes: Any) -> Path:
    directory = format1.save(tmp_path / "b")
    manifest = _manifest(directory)
    manifest["parts"]["drift"].update(changes)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def test_an_unregistered_kind_or_part_format_is_refused_by_name(
        format1: InterestModelBundle, tmp_path: Path) -> None:
    directory = _edit_drift_entry(format1, tmp_path, kind="cusum")
    with pytest.raises(BundleError, match=r"kind 'cusum'.*known: .*feature-gru"):
        InterestModelBundle.load(directory)
    directory = _edit_drift_entry(format1, tmp_path / "2", format=2)
    with pytest.raises(BundleError, match="'feature-gru' has format 2; this code reads format 1"):
        InterestModelBundle.load(directory)


def test_a_manifest_without_a_part_is_refused(format1: InterestModelBundle,
                                              tmp_path: Path) -> None:
    directory = format1.save(tmp_path / "b")
    manifest = _manifest(directory)
    del manifest["parts"]["encoder"]
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"no part for \['encoder'\]"):
        InterestModelBundle.load(directory)


def test_a_missing_part_file_is_named(format1: InterestModelBundle, tmp_path: Path) -> None:
    directory = format1.save(tmp_path / "b")
    shutil.rmtree(directory / "encoder")
    with pytest.raises(BundleError, match=r"missing \['encoder'\]"):
        InterestModelBundle.load(directory)


def test_registration_checks_the_role_and_refuses_a_taken_kind() -> None:
    with pytest.raises(TypeError, match="lacks"):
        register_part("drift", "no-traces")(type("NoTraces", (nn.Module,), {
            "save_part": lambda self, d: {}, "load_part": classmethod(lambda *a: None)}))
    with pytest.raises(ValueError, match="already"):
        register_part("drift", "feature-gru")(SurpriseZScore)
    with pytest.raises(ValueError, match="role"):
        register_part("ranker", "x")  # type: ignore[arg-type]
    assert get_kind("drift", "feature-gru").cls is DriftHead


class Clashing(SurpriseZScore):
    name = "sequence_model.pt"

    def save_part(self, directory: Path) -> dict[str, Any]:
        (directory / self.name).write_bytes(b"mine")
        return {}


def test_parts_cannot_overwrite_each_others_files(format1: InterestModelBundle,
                                                  tmp_path: Path) -> None:
    register_part("drift", "clashing")(Clashing)
    clashing = dataclasses.replace(format1, drift_detector=Clashing())
    with pytest.raises(BundleError, match=r"writes \['sequence_model.pt'\]"):
        clashing.save(tmp_path / "b")
    clashing.drift_detector.name = "item_ids.json"  # the bundle's own file
    with pytest.raises(BundleError, match=r"writes \['item_ids.json'\]"):
        clashing.save(tmp_path / "c")


# ------------------------------------------------------------------------ training side
def test_training_finds_a_trainer_by_kind_and_reads_probabilities_like_the_bundle(
        format1: InterestModelBundle) -> None:
    from training.drift.pipeline import DriftConfig
    from training.drift.splicing import DriftCase
    from training.drift.trainer import (
        BuiltFromOptions,
        FeatureGruTrainer,
        case_features,
        drift_trainer,
        register_drift_trainer,
        trace_probabilities,
    )

    assert DriftConfig().kind == "feature-gru"
    assert isinstance(drift_trainer(DriftConfig.from_dict({}).kind), FeatureGruTrainer)
    with pytest.raises(ValueError, match="no trainer"):
        drift_trainer("surprise-zscore")  # registered for bundles, not yet trainable
    with pytest.raises(BundleError, match="kind 'nope'"):
        drift_trainer("nope")
    scorer, head = format1.sequence_model, format1.drift_detector
    index = [format1.index_of(i) for i in HISTORY]
    cases = [DriftCase("none", "u", None, -1, index[:n], TIMES[:n]) for n in (16, 9, 12)]
    features = case_features(scorer, cases, scorer.item_text, torch.device("cpu"))
    through_features = FeatureGruTrainer().probabilities(head, scorer, features, cases,
                                                         torch.device("cpu"))
    through_traces = trace_probabilities(head, scorer, cases, torch.device("cpu"))
    served = format1.drift_probabilities_batch([HISTORY[:n] for n in (16, 9, 12)],
                                               [TIMES[:n] for n in (16, 9, 12)])
    for a, b, c in zip(through_features, through_traces, served, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
        np.testing.assert_allclose(a, c, atol=1e-5)

    # a statistical kind: built from the config's options, read through its own traces
    register_drift_trainer("surprise-zscore")(BuiltFromOptions)
    config = DriftConfig.from_dict({"kind": "surprise-zscore", "options": {"offset": 1.0}})
    trainer = drift_trainer(config.kind)
    detector = trainer.fit(scorer, features, cases, config, 0, torch.device("cpu"), False)
    assert isinstance(detector, SurpriseZScore) and detector.offset == 1.0
    zscore = dataclasses.replace(format1, drift_detector=detector)
    for a, b in zip(trainer.probabilities(detector, scorer, features, cases, torch.device("cpu")),
                    zscore.drift_probabilities_batch([HISTORY[:n] for n in (16, 9, 12)],
                                                     [TIMES[:n] for n in (16, 9, 12)]),
                    strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_an_embedding_shift_detector_trained_here_serves_the_probabilities_it_was_scored_on(
        format1: InterestModelBundle, tmp_path: Path) -> None:
    from app.ml.drift_shift import EmbeddingShiftHead
    from training.drift.pipeline import DriftConfig
    from training.drift.splicing import DriftCase
    from training.drift.trainer import case_features, drift_trainer

    scorer = format1.sequence_model
    index = [format1.index_of(i) for i in HISTORY]
    lengths = (16, 9, 12)
    cases = [DriftCase("abrupt", "u", "v", 6, index[:n], TIMES[:n]) for n in lengths]
    features = case_features(scorer, cases, scorer.item_text, torch.device("cpu"))
    config = DriftConfig.from_dict({"kind": "embedding-shift", "head": {"epochs": 1},
                                    "options": {"spaces": ["items", "text"], "surprise": True},
                                    "min_events": 2})
    trainer = drift_trainer(config.kind)
    detector = trainer.fit(scorer, features, cases, config, 0, torch.device("cpu"), False)
    assert isinstance(detector, EmbeddingShiftHead)
    evaluated = trainer.probabilities(detector, scorer, features, cases, torch.device("cpu"))
    bundle = InterestModelBundle.load(
        dataclasses.replace(format1, drift_detector=detector).save(tmp_path / "b"))
    assert _manifest(tmp_path / "b")["parts"]["drift"]["kind"] == "embedding-shift"
    served = bundle.drift_traces_batch([HISTORY[:n] for n in lengths],
                                       [TIMES[:n] for n in lengths])
    for (probs, surprise), e, f in zip(served, evaluated, features, strict=True):
        np.testing.assert_allclose(probs, e, atol=1e-5)
        np.testing.assert_allclose(surprise, f[:, 0].numpy(), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ layering
def _outside_model_code(module: str) -> bool:
    """app.* beyond app.ml / app.domain (core, services, store, api, main), or training."""
    top = module.split(".")[0]
    in_app = module.startswith("app.") and not module.startswith(("app.ml", "app.domain"))
    return in_app or top == "training"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_app_ml_imports_nothing_of_the_service() -> None:
    """app.ml ships with every registered version (code_paths: app.ml + app.domain): it must
    load outside this project's environment, so it imports neither the service's settings,
    services, store nor training."""
    offending = {
        str(path.relative_to(PROJECT_ROOT)): sorted(
            name for name in _imports(path) if _outside_model_code(name))
        for path in sorted((PROJECT_ROOT / "app" / "ml").rglob("*.py"))
    }
    assert {path: names for path, names in offending.items() if names} == {}


def test_the_shipped_model_code_loads_a_bundle_on_its_own(tmp_path: Path) -> None:
    """What a registered version carries (training.registry._stage_code: app.ml + app.domain)
    reads a bundle in a process that has nothing else of this project."""
    import subprocess
    import sys

    from training.registry import _stage_code

    code = _stage_code(tmp_path)
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import app\n"
        "assert app.__file__.startswith(sys.argv[1]), app.__file__\n"
        "from app.ml.loader import load_bundle\n"
        "bundle = load_bundle(sys.argv[2], 'cpu'); bundle.smoke_test()\n"
        "service = sorted(m for m in sys.modules if m.startswith(('app.core', 'app.services',"
        " 'app.store', 'training')))\n"
        "assert not service, service\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(code.parent), str(FORMAT1)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_version_registered_with_a_format1_bundle_loads_through_the_loader(
        tmp_path: Path) -> None:
    """A version in a user's registry from before parts had kinds: resolved, downloaded and
    read by the one loading path serving, the drift scan and the benchmarks use."""
    import mlflow

    from app.ml.loader import load_version
    from training import registry
    from training.registry import MlflowTarget

    target = MlflowTarget(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts"))
    registry.use_tracking(target, "format1")
    with mlflow.start_run():
        uri = registry.log_bundle_model(FORMAT1)
    version = registry.register(target, uri, "format1-fixture", {"val_ndcg@10": 0.0})
    target.client().set_registered_model_alias(target.model_name, target.alias,
                                               str(version.version))
    loaded = load_version(target.tracking_uri, target.model_name, target.alias,
                          tmp_path / "cache", "cpu")
    assert loaded.version == str(version.version)
    assert _manifest(Path(loaded.bundle.encoder.tokenizer_path).parent)["model_format"] == 1
    assert same_as_format1_code(loaded.bundle.score_next(HISTORY, TIMES), "scores")
