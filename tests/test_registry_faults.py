"""Registry outage and bad model versions (issue 6, item 3), on PostgreSQL with the tiny model.

With the MLflow registry unreachable the service keeps serving the version it has loaded and
says so; it also starts without one (ingestion works, model endpoints answer 503). A version
whose artifacts are corrupt or gone, whose format is unknown, or whose smoke inference fails
(NaN weights) is refused, and the old version keeps serving. (tests/test_serving.py covers a
missing artifact file, `model_format` 99 and a good hot swap.)
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pytest
import torch
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from app.ml.bundle import InterestModelBundle
from tests.conftest import TinyModel, tiny_model_database
from training import registry

# Nothing listens here (the reserved test range): connections are refused, as when the
# registry host is down. An http:// URI is what production uses (`http://mlflow:5000`).
UNREACHABLE_REGISTRY = "http://127.0.0.1:18392"
# The service must give up on an unreachable registry in seconds (MLflow's own default
# retries for about 4 minutes while the model manager holds its reload lock).
REGISTRY_GIVE_UP_SECONDS = 20.0
ITEMS = [str(i) for i in range(1, 21)]  # MovieLens ids: in the tiny model's catalogue


@dataclass
class Registry:
    client: TestClient
    settings: Settings
    target: registry.MlflowTarget
    model: TinyModel
    root: Path


@pytest.fixture(scope="module")
def served(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Registry]:
    root = tmp_path_factory.mktemp("registry-faults")
    with tiny_model_database(tiny_model, root, "registry") as (settings, target), \
            TestClient(create_app(settings)) as client:
        items = [{"item_id": item, "title": f"Movie {item}"} for item in ITEMS]
        assert client.post("/items", json={"items": items}).status_code == 200
        events = [{"event_id": f"r-{n}", "user_id": "r1", "item_id": ITEMS[n % 20],
                   "type": "view", "timestamp": 1_700_000_000 + 3600 * n}
                  for n in range(30)]
        assert client.post("/events", json={"events": events}).status_code == 200
        yield Registry(client, settings, target, tiny_model, root)


def _assert_still_serving(client: TestClient, version: str) -> None:
    current = client.get("/models/current").json()
    assert current["version"] == version and current["last_reload_error"]
    recommended = client.get("/recommend/r1", params={"k": 5})
    assert recommended.status_code == 200 and recommended.json()["model_version"] == version
    session = client.post("/recommend", json={"recent_item_ids": ITEMS[:5], "k": 3})
    assert session.status_code == 200 and session.json()["model_version"] == version
    assert client.get("/interest-profile/r1").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_registry_unreachable_keeps_the_loaded_version_serving(served: Registry) -> None:
    client, manager = served.client, served.client.app.state.runtime.models
    assert client.get("/models/current").json()["version"] == "1"
    failures = client.get("/models/current").json()["reload_failures"]
    reachable = manager.settings
    manager.settings = reachable.model_copy(update={"mlflow_tracking_uri": UNREACHABLE_REGISTRY})
    try:
        started = time.monotonic()
        outcome = client.post("/models/reload", params={"force": "true"}).json()
        took = time.monotonic() - started
        assert outcome["changed"] is False and outcome["version"] == "1"
        assert "registry unavailable" in outcome["error"] and "18392" in outcome["error"]
        assert took < REGISTRY_GIVE_UP_SECONDS, f"reload hung {took:.1f} s on a dead registry"
        _assert_still_serving(client, "1")
        current = client.get("/models/current").json()
        assert current["reload_failures"] == failures + 1
        assert "registry unavailable" in current["last_reload_error"]
        # An item upsert waits for a reload in progress (it extends the served catalogue):
        # that wait stays bounded while the registry is down.
        poller = threading.Thread(target=manager.reload)
        poller.start()
        item = {"item_id": "during-registry-outage", "title": "Arrived while MLflow was down"}
        started = time.monotonic()
        assert client.post("/items", json={"items": [item]}).status_code == 200
        assert time.monotonic() - started < REGISTRY_GIVE_UP_SECONDS
        poller.join()
    finally:
        manager.settings = reachable
    # The registry is back: the next check succeeds (the version is unchanged).
    assert client.post("/models/reload").json() == {"changed": False, "version": "1",
                                                    "error": None}
    assert client.get("/models/current").json()["last_reload_error"] is None  # not stale


def test_service_starts_without_a_reachable_registry(served: Registry) -> None:
    down = served.settings.model_copy(update={"mlflow_tracking_uri": UNREACHABLE_REGISTRY})
    started = time.monotonic()
    with TestClient(create_app(down)) as client:
        assert time.monotonic() - started < REGISTRY_GIVE_UP_SECONDS + 30  # imports included
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] == "ok"
        assert "not loaded" in ready.json()["checks"]["model"]
        current = client.get("/models/current").json()
        assert current["version"] is None
        assert "registry unavailable" in current["last_reload_error"]
        unavailable = client.get("/recommend/r1")
        assert unavailable.status_code == 503
        assert unavailable.json()["error"] == "model_unavailable"
        # The store side keeps working without any model.
        assert client.get("/users/r1/events", params={"limit": 1}).status_code == 200
        event = {"event_id": "no-registry-1", "user_id": "r1", "item_id": "1", "type": "view",
                 "timestamp": 1_700_500_000}
        assert client.post("/events", json={"events": [event]}).json()["accepted"] == 1


def _nan_weights(bundle: InterestModelBundle, part: str) -> None:
    module = bundle.sequence_model if part == "sequence" else bundle.drift_head
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.fill_(float("nan"))


def _register_broken(served: Registry, fault: str) -> str:
    """Register a copy of the tiny bundle with `fault` and move the alias to it."""
    source = served.model.report.bundle_dir
    copy = served.root / f"bundle-{fault}"
    if fault in ("nan-sequence", "nan-drift-head"):
        bundle = InterestModelBundle.load(source)
        _nan_weights(bundle, "sequence" if fault == "nan-sequence" else "drift")
        bundle.save(copy)
    else:
        shutil.copytree(source, copy)
    if fault == "corrupt-weights":
        (copy / "sequence_model.pt").write_bytes(b"\x00not a torch file\xff" * 64)
    elif fault == "truncated-weights":
        weights = (copy / "drift_head.pt").read_bytes()
        (copy / "drift_head.pt").write_bytes(weights[: len(weights) // 2])
    elif fault == "unknown-format":
        manifest = json.loads((copy / "manifest.json").read_text())
        (copy / "manifest.json").write_text(json.dumps({**manifest, "model_format": "2"}))
    elif fault == "corrupt-manifest":
        (copy / "manifest.json").write_text("{ this is not json")
    registry.use_tracking(served.target, "registry-fault-tests")
    with mlflow.start_run():
        uri = registry.log_bundle_model(copy)
    version = registry.register(served.target, uri, served.model.report.fingerprint,
                                {"val_ndcg@10": 1.0})
    if fault == "artifacts-gone":
        location = served.target.client().get_model_version_download_uri(
            "interest-model", str(version.version))
        shutil.rmtree(urlparse(location).path)
    served.target.client().set_registered_model_alias("interest-model", "champion",
                                                      str(version.version))
    return str(version.version)


@pytest.mark.parametrize(("fault", "reason"), [
    ("corrupt-weights", "sequence_model.pt is not a readable weights file"),
    ("truncated-weights", "drift_head.pt is not a readable weights file"),
    ("unknown-format", "model_format '2'"),
    ("corrupt-manifest", "manifest.json is not valid JSON"),
    ("artifacts-gone", "downloading"),
    ("nan-sequence", "next-item scores"),
    ("nan-drift-head", "drift probabilities"),
])
def test_a_broken_version_is_refused_and_the_old_one_keeps_serving(
        served: Registry, fault: str, reason: str) -> None:
    client = served.client
    bad = _register_broken(served, fault)
    outcome = client.post("/models/reload").json()
    assert outcome["changed"] is False and outcome["version"] == "1", outcome
    assert outcome["error"] and reason in outcome["error"], outcome
    _assert_still_serving(client, "1")
    assert reason in client.get("/models/current").json()["last_reload_error"]
    assert bad != "1"
