"""The serving runtime (issue 11): routers read nothing from `app.state`; post-commit effects
run in the runtime; the catalogue refresher works on SQLite too (no NOTIFY: the local effect);
the batcher's, drift queue's and refresher's counters are exported at /metrics."""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import PROJECT_ROOT, Settings
from app.main import create_app
from app.services.drift_queue import DriftQueue
from app.store.migrate import upgrade_head
from tests.conftest import TinyModel


def test_routers_read_nothing_from_app_state() -> None:
    routes = sorted((PROJECT_ROOT / "app" / "api" / "routes").glob("*.py"))
    assert routes
    for path in routes:
        source = path.read_text()
        assert "app.state" not in source and "request.app" not in source, path.name


def _metric(client: TestClient, name: str, **labels: str) -> float:
    text = client.get("/metrics").text
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    match = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    assert match, f"{name}{labels} not in /metrics"
    return float(match.group(1))


def test_drift_queue_counts_are_exported(client: TestClient, catalogue: list[str]) -> None:
    # no model is served here: every queued check fails, and is counted
    events = [{"event_id": f"q-{n}", "user_id": f"u{n}", "item_id": catalogue[0],
               "type": "view", "timestamp": 1_700_000_000 + n} for n in range(3)]
    body = client.post("/events", params={"detect_drift": "true"},
                       json={"events": events}).json()
    assert body["drift_checks_queued"] == 3
    client.app.state.runtime.drift_queue.join()  # type: ignore[attr-defined]
    assert _metric(client, "driftrec_drift_checks_total", outcome="failed") == 3
    assert _metric(client, "driftrec_drift_queue_depth") == 0
    assert _metric(client, "driftrec_catalogue_pending_items") == 0


def test_a_full_drift_queue_drops_and_counts() -> None:
    class Observer:
        def __init__(self) -> None:
            self.outcomes: list[str] = []
            self.depths: list[int] = []

        def depth(self, depth: int) -> None:
            self.depths.append(depth)

        def outcome(self, outcome: str, count: int = 1) -> None:
            self.outcomes.append(outcome)

    release = threading.Event()
    observer = Observer()
    queue = DriftQueue(lambda _: release.wait(10) and None, 2, observer)
    queue.start()
    try:
        assert queue.submit(["a"]) == 1
        time.sleep(0.2)  # "a" is being checked: the queue holds 2 more
        assert queue.submit(["b", "c", "d", "e"]) == 2
        assert observer.outcomes.count("dropped") == 2 and queue.dropped == 2
        assert max(observer.depths) == 2
    finally:
        release.set()
        queue.join()
        queue.stop()
    assert observer.outcomes.count("done") == 3 and observer.depths[-1] == 0


# ------------------------------------------------------------------ SQLite, with a model
@pytest.fixture(scope="module")
def sqlite_served(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[TestClient]:
    root = Path(tmp_path_factory.mktemp("runtime-sqlite"))
    shutil.copy(tiny_model.root / "mlflow.db", root / "mlflow.db")
    url = f"sqlite:///{root / 'driftrec.db'}"
    upgrade_head(url)
    settings = Settings(database_url=url, mlflow_tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
                        mlflow_artifact_root=str(root / "artifacts"), model_poll_seconds=0,
                        data_cache_dir=root / "cache")
    with TestClient(create_app(settings)) as client:
        yield client


def test_items_are_embedded_and_re_embedded_in_the_background_on_sqlite(
        sqlite_served: TestClient) -> None:
    client = sqlite_served
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    item = {"item_id": "lite-1", "title": "Haunted", "text": "A ghost haunts an old house.",
            "categories": ["Horror"]}
    assert client.post("/items", json={"items": [item]}).status_code == 200
    assert runtime.catalogue.wait_idle(timeout=30)
    bundle = runtime.models.current.bundle
    assert bundle.topics.names[bundle.item_topic("lite-1")] == "Horror"
    rows = len(bundle.item_ids)
    updated = {**item, "text": "Two friends open a bakery.", "categories": ["Comedy"]}
    assert client.post("/items", json={"items": [updated]}).status_code == 200
    assert runtime.catalogue.wait_idle(timeout=30)
    changed = runtime.models.current.bundle
    assert changed is not bundle and len(changed.item_ids) == rows  # replaced, not appended
    assert changed.topics.names[changed.item_topic("lite-1")] == "Comedy"
    row = changed.index_of("lite-1")
    assert not bundle.item_text_embeddings[row].equal(changed.item_text_embeddings[row])
    # the same stored item again: nothing to embed
    embedded = runtime.catalogue.embedded
    assert client.post("/items", json={"items": [updated]}).status_code == 200
    assert runtime.catalogue.wait_idle(timeout=30)
    assert runtime.catalogue.embedded == embedded
    assert _metric(client, "driftrec_catalogue_items_embedded_total") == embedded
    response = client.post("/recommend", json={"recent_item_ids": ["lite-1", "1"], "k": 3})
    assert response.status_code == 200
    assert _metric(client, "driftrec_inference_batch_size_count", kind="score") >= 1


def test_a_small_upsert_is_embedded_before_a_large_backlog_is(sqlite_served: TestClient
                                                               ) -> None:
    client = sqlite_served
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    big = [{"item_id": f"backlog-{n}", "title": f"Backlog {n}",
            "text": f"Backlog item {n}: " + " ".join(f"w{(n * 3 + i) % 300}" for i in range(80))}
           for n in range(1_000)]
    assert client.post("/items", json={"items": big}).status_code == 200
    assert client.post("/items", json={"items": [{"item_id": "urgent", "title": "Urgent",
                                                  "categories": ["Horror"]}]}
                       ).status_code == 200
    deadline = time.monotonic() + 60
    while runtime.models.current.bundle.index_of("urgent") is None:
        assert time.monotonic() < deadline, "the small upsert was never embedded"
        time.sleep(0.01)
    bundle = runtime.models.current.bundle
    waiting = sum(bundle.index_of(item["item_id"]) is None for item in big)
    assert waiting > 500, f"the small upsert waited for the backlog ({waiting} left)"
    assert runtime.catalogue.wait_idle(timeout=120)
    assert all(runtime.models.current.bundle.index_of(i["item_id"]) for i in big)
