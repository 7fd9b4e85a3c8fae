"""Retraining with a fair gate, and the whole loop a new team goes through.

- The gate scores the new version and the champion on the same holdout (the new snapshot's
  split, through the serving bundle code; items the champion never saw are scored by their
  text): it keeps the champion against a worse version and promotes a better one, with a
  store that grew between the two.
- A team imports its own catalogue and events from CSV into PostgreSQL, runs
  ``python -m training retrain`` (tiny config), and the running service serves the new
  champion, through its alias poll, without a restart; then the store grows and a second
  retrain goes through the gate.
"""

from __future__ import annotations

import csv
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import torch
import yaml
from fastapi.testclient import TestClient

from app.core import config as app_config
from app.core.config import PROJECT_ROOT, Settings
from app.main import create_app
from app.ml.bundle import InterestModelBundle
from app.schemas.events import EventIn
from app.schemas.items import ItemIn
from app.services import ingestion
from app.store.db import make_engine, make_session_factory
from tests.conftest import TinyModel, scratch_pg_database
from training import registry
from training.__main__ import main as training_main
from training.data.__main__ import main as data_main
from training.data.store import read_snapshot
from training.gate import holdout_metrics, promote_if_not_worse, scores_on_snapshot
from training.recommender import prepare_split
from training.registry import MlflowTarget


def _register(target: MlflowTarget, bundle_dir: Path) -> str:
    registry.use_tracking(target, "gate-tests")
    with mlflow.start_run():
        uri = registry.log_bundle_model(bundle_dir)
    return str(registry.register(target, uri, "some-older-snapshot", {"val_ndcg@10": 0.0})
               .version)


def _grow(store_url: str, users: list[str]) -> None:
    """New items (text only) and later events of known users, some on the new items."""
    engine = make_engine(store_url)
    factory, settings = make_session_factory(engine), Settings(database_url=store_url)
    new_items = [ItemIn(item_id=f"new-{i}", title=f"A new film {i}",
                        text=f"A new film {i} (1999). Genres: Drama.", categories=["Drama"])
                 for i in range(3)]
    events = [EventIn(user_id=user, item_id=item, type="watch",
                      timestamp=900_000_000 + 3600 * k + 60 * j)
              for j, user in enumerate(users) for k, item in enumerate(["new-0", "50", "new-1"])]
    with factory() as session, session.begin():
        ingestion.upsert_items(session, new_items, settings)
    with factory() as session, session.begin():
        ingestion.ingest_events(session, events, settings)
    engine.dispose()


def test_gate_keeps_the_champion_against_a_worse_version_and_promotes_a_better_one(
        tiny_model: TinyModel, tmp_path: Path) -> None:
    shutil.copy(tiny_model.root / "mlflow.db", tmp_path / "mlflow.db")
    target = MlflowTarget(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts"))
    store = tmp_path / "store.db"
    with sqlite3.connect(tiny_model.store_url.removeprefix("sqlite:///")) as source, \
            sqlite3.connect(store) as copy:
        source.backup(copy)
    store_url = f"sqlite:///{store}"
    before = read_snapshot(make_engine(store_url))
    users = before.user_ids[:20]
    _grow(store_url, users)  # the store grew since the champion was trained
    snapshot = read_snapshot(make_engine(store_url))
    assert snapshot.fingerprint != before.fingerprint
    assert len(snapshot.items) == len(before.items) + 3
    _, split = prepare_split(snapshot, 40)

    champion = InterestModelBundle.load(tiny_model.report.bundle_dir, "cpu")
    assert "new-0" not in champion.item_ids  # the champion scores the new items by text
    assert scores_on_snapshot(champion, split.train[:3], snapshot).shape == (
        3, len(snapshot.items) + 1)
    worse = InterestModelBundle.load(tiny_model.report.bundle_dir, "cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in worse.sequence_model.parameters():
            parameter.normal_()
    worse.save(tmp_path / "worse")
    expected = {"champion": holdout_metrics(champion, split, snapshot)["val"]["ndcg@10"],
                "worse": holdout_metrics(worse, split, snapshot)["val"]["ndcg@10"]}
    assert expected["worse"] < expected["champion"]  # the premise of this test

    lines: list[str] = []
    worse_version = _register(target, tmp_path / "worse")
    kept = promote_if_not_worse(target, worse_version, worse, split, snapshot, log=lines.append)
    assert not kept.promoted and kept.previous == "1" and "worse" in kept.reason
    assert "this snapshot's holdout" in kept.reason
    assert str(registry.champion(target).version) == "1"
    client = target.client()
    run = client.get_run(client.get_model_version("interest-model", worse_version).run_id)
    assert run.data.metrics["gate.champion.val.ndcg_at_10"] == pytest.approx(
        expected["champion"], abs=1e-6)
    assert run.data.metrics["gate.new.val.ndcg_at_10"] == pytest.approx(expected["worse"],
                                                                        abs=1e-6)
    assert run.data.tags["gate.reason"] == kept.reason
    assert any(line.startswith("gate, this snapshot's holdout") for line in lines)

    assert registry.promote(target, worse_version, force=True).promoted  # --force stays
    better_version = _register(target, tiny_model.report.bundle_dir)
    promoted = promote_if_not_worse(target, better_version, champion, split, snapshot,
                                    log=lines.append)
    assert promoted.promoted and promoted.previous == worse_version, promoted.reason
    assert str(registry.champion(target).version) == better_version
    tags = client.get_model_version("interest-model", better_version).tags
    assert tags["gate_promoted"] == "True" and ">=" in tags["gate_reason"]


# --------------------------------------------------------------------- a team's own data
GENRES = ["jazz", "rock", "folk", "techno"]


def _catalogue(path: Path, extra: int = 0) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_id", "title", "text", "categories"])
        for i in range(48 + extra):
            genre = GENRES[i % 4]
            writer.writerow([f"alb-{i}", f"Album {i}", f"A {genre} record, number {i}", genre])


def _events(path: Path, users: range, per_user: int, start: int) -> None:
    rng = np.random.default_rng(start)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user", "album", "ts", "type"])
        for u in users:
            for k in range(per_user):
                genre = (u + (k >= per_user // 2) * (u % 2)) % 4  # odd users change taste
                item = 4 * int(rng.integers(0, 12)) + genre
                writer.writerow([f"user-{u}", f"alb-{item}", start + 3600 * (per_user * u + k),
                                 "play" if k % 3 else "like"])


def _wait_for_version(client: TestClient, version: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        current = client.get("/models/current")
        if current.status_code == 200 and current.json()["version"] == version:
            return current.json()
        assert time.monotonic() < deadline, f"the service never loaded v{version}"
        time.sleep(0.2)


def test_a_team_imports_csv_retrains_and_the_running_service_serves_the_new_champion(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = yaml.safe_load((PROJECT_ROOT / "configs" / "tiny.yaml").read_text())
    tiny["run"]["output_dir"] = str(tmp_path / "runs")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny))
    items, events = tmp_path / "albums.csv", tmp_path / "plays.csv"
    _catalogue(items)
    _events(events, range(40), 30, 1_700_000_000)
    mapping = ["--map", "user=user_id", "--map", "album=item_id", "--map", "ts=timestamp"]
    with scratch_pg_database("retrain") as url:
        settings = Settings(database_url=url, model_poll_seconds=0.2,
                            mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                            mlflow_artifact_root=str(tmp_path / "artifacts"),
                            data_cache_dir=tmp_path / "cache", device="cpu")
        for key in ("database_url", "mlflow_tracking_uri", "mlflow_artifact_root"):
            monkeypatch.setenv(f"DRIFTREC_{key.upper()}", str(getattr(settings, key)))
        app_config.get_settings.cache_clear()
        try:
            assert data_main(["import", "--items", str(items), "--events", str(events),
                              "--no-progress", *mapping]) == 0
            with TestClient(create_app(settings)) as client:
                assert client.get("/models/current").json()["version"] is None  # none yet
                assert client.get("/recommend/user-3").status_code == 503
                assert training_main(["retrain", "--config", str(config), "--device", "cpu",
                                      "--no-progress"]) == 0
                first = _wait_for_version(client, "1")  # picked up by the alias poll
                body = client.get("/recommend/user-3", params={"k": 5}).json()
                assert body["model_version"] == "1" and len(body["items"]) == 5
                assert all(i["item_id"].startswith("alb-") for i in body["items"])
                assert first["version"] == "1"

                # The store grows (new albums, later plays); retrain goes through the gate.
                _catalogue(items, extra=4)
                _events(events, range(20, 48), 30, 1_750_000_000)
                assert data_main(["import", "--items", str(items), "--events", str(events),
                                  "--no-progress", *mapping]) == 0
                target = registry.default_target()
                assert training_main(["retrain", "--config", str(config), "--device", "cpu",
                                      "--no-progress"]) == 0
                second = target.client().get_model_version("interest-model", "2")
                assert second.tags["gate_champion"] == "1" and second.tags["gate_reason"]
                run = target.client().get_run(second.run_id)
                assert {"gate.new.val.ndcg_at_10", "gate.champion.val.ndcg_at_10"} <= set(
                    run.data.metrics)
                promoted = second.tags["gate_promoted"] == "True"
                assert promoted == (run.data.metrics["gate.new.val.ndcg_at_10"]
                                    >= run.data.metrics["gate.champion.val.ndcg_at_10"])
                expected = "2" if promoted else "1"
                assert str(registry.champion(target).version) == expected
                _wait_for_version(client, expected)
                assert client.get("/recommend/user-47").json()["model_version"] == expected
                # nothing changed since: --if-changed does nothing
                if promoted:
                    assert training_main(["retrain", "--config", str(config), "--if-changed",
                                          "--no-progress"]) == 0
                    assert len(target.client().search_model_versions(
                        "name='interest-model'")) == 2
        finally:
            app_config.get_settings.cache_clear()
