"""The ``bocpd`` drift kind trained, registered and served.

- The drift pipeline fits it (priors and a few hyper-parameters on the head-training users,
  per-bucket thresholds on the calibration users) and reports the topic baselines beside it.
- configs/tiny.yaml with ``drift.kind: bocpd`` on ml-100k's tiny users, and the same on a small
  catalogue without categories (text only: topics from embedding clusters): trained,
  registered, served by the app; ``GET /drift/{user}`` equals the offline decision over the
  user's window.
- A run whose served decisions (the incremental path) differ from the evaluated ones is
  refused before anything is registered.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app.core.config import PROJECT_ROOT, Settings
from app.main import create_app
from app.ml.bundle import InterestModelBundle
from app.ml.drift_bocpd import BocpdDrift, BocpdEngine
from app.ml.incremental import drift_window_start
from app.services.user_history import load_history
from app.store.db import make_engine, make_session_factory
from app.store.migrate import upgrade_head
from tests.conftest import tiny_store
from tests.test_drift import SPLICE, _item_vectors, _model, _users
from training import registry
from training.config import load_config
from training.drift.bocpd_fit import DriftCatalogue
from training.drift.pipeline import DriftConfig, train_and_evaluate_drift
from training.pipeline import DriftParityError, run_training
from training.registry import MlflowTarget


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_pipeline_fits_bocpd_and_reports_the_topic_baselines() -> None:
    config = DriftConfig.tiny()
    config.splice = SPLICE
    config.kind = "bocpd"
    config.options = {"search": {"hazard": [50.0, 100.0]}, "vector_dim": 2}
    config.max_users = None
    categories = [("low",) if i <= 20 else ("high",) for i in range(1, 41)]
    result = train_and_evaluate_drift(_model(max_len=16), torch.as_tensor(_item_vectors()),
                                      _users(48), config, seed=0, device=torch.device("cpu"),
                                      progress=False, catalogue=DriftCatalogue(categories))
    detector = result.detector
    assert isinstance(detector, BocpdDrift)
    assert detector.topic_names == ["high", "low"] and detector.config.n_topics == 2
    assert detector.config.hazard_lambda in (50.0, 100.0)
    assert len(detector.thresholds.values) == 3  # one per history-length bucket
    assert result.threshold == 0.5  # sigmoid(log-odds - bucket threshold) >= 0.5
    assert result.calibration_alarms_per_1k <= config.target_alarms_per_1k
    rows = result.metrics
    assert any("bocpd" in name for name in rows) and any("glr" in name for name in rows)
    assert rows["ours"]["f1"] is not None and "kind_accuracy" in rows["ours"]
    # the evaluated decisions are placed where the detector located the change
    decided = [p for points in result.decisions("evaluation") for p in points]
    assert all(p.change_index <= p.index for p in decided)


# ------------------------------------------------------------------------------ end to end
def _tiny_config(root: Path, **drift: Any) -> Any:
    config = load_config(PROJECT_ROOT / "configs" / "tiny.yaml")
    config.run.output_dir = str(root / "runs")
    config.drift.kind = "bocpd"
    config.drift.unseen_view = False  # the held-out scorer is feature-gru's concern
    config.drift.options = {"search": {"hazard": [50.0, 100.0]}, **drift}
    return config


def _train(root: Path, store_url: str, config: Any) -> tuple[Any, MlflowTarget]:
    target = MlflowTarget(f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts"))
    report = run_training(config, device="cpu", register=True, promote=True, progress=False,
                          target=target, log=lambda _: None, database_url=store_url)
    return report, target


def _served_equals_offline(root: Path, store_url: str, target: MlflowTarget,
                           bundle: InterestModelBundle, users: list[str]) -> int:
    """GET /drift/{user} of every user, from the app serving the champion, against the
    bundle's decision over a replay of the user's window; returns how many detected."""
    settings = Settings(database_url=store_url, mlflow_tracking_uri=target.tracking_uri,
                        mlflow_artifact_root=target.artifact_root, model_poll_seconds=0,
                        data_cache_dir=root / "cache")
    engine = make_engine(store_url)
    factory = make_session_factory(engine)
    detected = 0
    try:
        with TestClient(create_app(settings)) as client:
            for user in users:
                body = client.get(f"/drift/{user}").json()
                with factory() as session:
                    history = load_history(session, user, bundle.drift.max_events)
                start = drift_window_start(history.total, bundle.drift.max_events)
                first = start - history.offset
                known = [k for k in range(first, len(history.item_ids))
                         if bundle.index_of(history.item_ids[k]) is not None]
                [trace] = bundle.drift_event_traces(
                    [[history.item_ids[k] for k in known]],
                    [[history.timestamps[k] for k in known]])
                change = bundle.decide(trace)
                assert body["drift_detected"] == (change is not None), user
                if change is None:
                    assert body["kind"] == "none"
                    continue
                detected += 1
                assert body["kind"] == change.kind
                assert body["change_point"]["index"] == history.offset + known[
                    change.change_index]
                assert body["score"] == pytest.approx(change.score, abs=1e-6)
    finally:
        engine.dispose()
    return detected


def test_tiny_bocpd_trains_registers_and_serves_its_offline_decisions(
        tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade_head(store_url)
    tiny_store(store_url)
    report, target = _train(tmp_path, store_url, _tiny_config(tmp_path))
    assert report.version == "1"
    assert registry.champion(target) is not None
    parity = report.bundle_metrics["parity"]
    assert all(check.ok for check in parity.values())
    bundle = InterestModelBundle.load(report.bundle_dir)
    part = bundle.drift_detector
    assert isinstance(part, BocpdDrift) and bundle.drift.threshold == 0.5
    assert bundle.topics.method == "categories"
    # multi-topic: the part reads every genre of an item, the TopicTable files it under one
    multi = np.diff(part.items.topic_offsets)
    assert multi.max() > 1 and len(part.topic_names) >= len(bundle.topics.names) - 1
    rows = bundle.metrics["drift"]  # the rate-matched rows beside ours
    assert any("bocpd" in name for name in rows) and any("glr" in name for name in rows)
    users = sorted({u for u in _store_users(store_url)})
    detected = _served_equals_offline(tmp_path, store_url, target, bundle, users)
    print(f"ml-100k tiny users: {detected} of {len(users)} with a change served")


def _store_users(store_url: str) -> list[str]:
    from sqlalchemy import text

    engine = make_engine(store_url)
    try:
        with engine.connect() as connection:
            return [row[0] for row in connection.execute(text(
                "SELECT DISTINCT user_id FROM events"))]
    finally:
        engine.dispose()


# A catalogue without categories: three kinds of items told apart only by their text.
THEMES = {
    "space": "a science fiction film about starships, distant planets and alien worlds",
    "romance": "a romantic drama about love, marriage and a wedding in Paris",
    "crime": "a gritty crime thriller about detectives, gangsters and a bank robbery",
}


def _text_only_store(store_url: str, users: int = 40, seed: int = 0) -> None:
    """Items with a title and text only; users who keep to one theme, and half of them move
    to another one part-way (a change to find)."""
    rng = np.random.default_rng(seed)
    themes = list(THEMES)
    items = [{"item_id": f"{theme}{n}", "title": f"{theme.title()} story {n}",
              "text": f"{THEMES[theme]}, part {n}"} for theme in themes for n in range(15)]
    events = []
    for u in range(users):
        length = int(rng.integers(45, 70))
        first, second = rng.choice(3, 2, replace=False)
        cut = int(rng.integers(20, 35)) if u % 2 else length
        t = 1.0e9 + 86_400.0 * u
        for k in range(length):
            theme = themes[first if k < cut else second]
            t += float(rng.choice([30.0, 120.0, 3_600.0, 86_400.0]))
            events.append({"event_id": f"u{u}e{k}", "user_id": f"u{u}",
                           "item_id": f"{theme}{int(rng.integers(0, 15))}", "type": "view",
                           "timestamp": t})
    settings = Settings(database_url=store_url, model_poll_seconds=0)
    with TestClient(create_app(settings)) as client:
        assert client.post("/items", json={"items": items}).status_code == 200
        for start in range(0, len(events), 500):
            response = client.post("/events", json={"events": events[start:start + 500]})
            assert response.status_code == 200, response.text


def test_a_catalogue_without_categories_gets_topics_from_embedding_clusters(
        tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade_head(store_url)
    _text_only_store(store_url)
    config = _tiny_config(tmp_path)
    config.run.topic_clusters = 3
    report, target = _train(tmp_path, store_url, config)
    bundle = InterestModelBundle.load(report.bundle_dir)
    part = bundle.drift_detector
    assert isinstance(part, BocpdDrift)
    assert bundle.topics.method == "kmeans"
    # the part's topics are the bundle's clusters, one per item
    assert part.topic_names == bundle.topics.names
    assert np.array_equal(np.diff(part.items.topic_offsets)[1:], np.ones(len(bundle.item_ids)))
    stored = part.items.topic_ids[part.items.topic_offsets[1:-1]]
    assert np.array_equal(stored, bundle.topics.item_topics)
    users = [f"u{u}" for u in range(40)]
    detected = _served_equals_offline(tmp_path, store_url, target, bundle, users)
    print(f"text-only catalogue: {detected} of {len(users)} users with a change served")
    assert detected > 0  # half the users move to another theme part-way


def test_a_run_whose_served_decisions_differ_from_the_evaluated_ones_is_not_registered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The served path (the engine's extension) made to drift away from the evaluated one:
    the run stops before MLflow, and no version exists."""
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade_head(store_url)
    _text_only_store(store_url, seed=1)
    honest = BocpdEngine.extend

    def skewed(self: BocpdEngine, requests: Any) -> Any:
        grown = honest(self, requests)
        return [state.__class__(state.bocpd, state.last_time,
                                np.where(np.arange(state.n) >= 15, 0.99,
                                         state.probabilities).astype(np.float32),
                                state.surprise, state.located, state.kinds)
                for state in grown]

    monkeypatch.setattr(BocpdEngine, "extend", skewed)
    config = _tiny_config(tmp_path)
    config.run.topic_clusters = 3
    with pytest.raises(DriftParityError, match="not registered"):
        _train(tmp_path, store_url, config)
    target = MlflowTarget(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts"))
    assert registry.champion(target) is None
