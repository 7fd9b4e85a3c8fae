"""The model-backed endpoints, on PostgreSQL, served from the tiny registered model.

Covers the contract of every endpoint, hot reload without a failed request, refusal of broken
versions, and the consistency check: HR@10 through `POST /recommend` equals the registered
test HR@10 of the served version.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import torch
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from app.ml.bundle import InterestModelBundle
from app.store.db import make_engine, make_session_factory
from tests.conftest import TinyModel, tiny_model_database, tiny_users_data
from training import registry
from training.data.importer import import_movielens
from training.data.sequences import LeaveOneOutSplit, build_vocab
from training.evaluate import score_sequences


@dataclass
class Served:
    client: TestClient
    split: LeaveOneOutSplit
    item_ids: list[str]
    target: registry.MlflowTarget
    model: TinyModel
    root: Path


@pytest.fixture(scope="module")
def served(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("serving")
    dataset, split, subset = tiny_users_data()
    with tiny_model_database(tiny_model, root, "serving") as (settings, target):
        engine = make_engine(settings.database_url)
        import_movielens(subset, make_session_factory(engine), settings, progress=False)
        engine.dispose()
        with TestClient(create_app(settings)) as client:
            yield Served(client, split, build_vocab(dataset.snapshot()).item_ids, target,
                         tiny_model, root)


def _user(served: Served, position: int = 0) -> str:
    return served.split.train[position].user_id


def test_models_current_shows_the_champion(served: Served) -> None:
    body = served.client.get("/models/current").json()
    assert body["version"] == "1" and body["alias"] == "champion" and body["device"] == "cpu"
    assert body["last_reload_error"] is None and body["metrics"]
    assert served.client.get("/readyz").status_code == 200


def test_interest_profile_contract(served: Served) -> None:
    user = _user(served)
    body = served.client.get(f"/interest-profile/{user}").json()
    last = served.client.get(f"/users/{user}/events", params={"limit": 1}).json()["events"][0]
    assert body["as_of"] == last["timestamp"] and body["model_version"] == "1"
    for side in ("long_term", "short_term"):
        assert sum(w["weight"] for w in body[side]) == pytest.approx(1.0)
    assert set(body["contexts"]) == {"morning", "afternoon", "evening", "night"}
    assert {t["trend"] for t in body["trends"]} <= {"rising", "declining", "stable", "new",
                                                    "dormant"}
    assert body["top_items"] and all(item["title"] for item in body["top_items"])
    assert served.client.get("/interest-profile/nobody").status_code == 404


def test_recommend_contract(served: Served) -> None:
    user = _user(served, 1)
    body = served.client.get(f"/recommend/{user}", params={"k": 7}).json()
    assert body["user_id"] == user and len(body["items"]) == 7
    seen = {seq for seq in _history_ids(served, 1)}
    assert not seen & {item["item_id"] for item in body["items"]}
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all(item["title"] and item["topic"] for item in body["items"])
    too_many = served.client.get(f"/recommend/{user}", params={"k": 10_000})
    assert too_many.status_code == 422 and too_many.json()["detail"][0]["field"] == "k"
    assert served.client.get("/recommend/nobody").status_code == 404


def test_recommend_for_a_session(served: Served) -> None:
    history = _history_ids(served, 2)[-5:]
    body = served.client.post("/recommend", json={"recent_item_ids": history, "k": 5}).json()
    assert len(body["items"]) == 5 and body["user_id"] is None
    assert not set(history) & {item["item_id"] for item in body["items"]}
    unknown = served.client.post("/recommend", json={"recent_item_ids": ["1", "no-such"]})
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["row"] == 1
    misaligned = served.client.post("/recommend", json={"recent_item_ids": ["1", "2"],
                                                        "timestamps": [1]})
    assert misaligned.status_code == 422


def _history_ids(served: Served, position: int) -> list[str]:
    test_inputs = served.split.test_inputs()[position]
    return [served.item_ids[i - 1] for i in test_inputs.items]


def test_served_hr_at_10_equals_the_registered_test_hr(served: Served) -> None:
    """The consistency check: the service ranks exactly as offline evaluation did.

    Per user, the top 10 of `POST /recommend` (history without the last item, drift-aware
    re-ranking off, seen items not masked) equals the top 10 of the trainer's evaluation code
    on the registered weights, and the resulting HR@10 equals the registered test HR@10.
    """
    version = served.target.client().get_model_version("interest-model", "1")
    registered = float(version.tags["test_hr_at_10"])
    bundle = InterestModelBundle.load(served.model.report.bundle_dir)
    offline = score_sequences(bundle.sequence_model, served.split.test_inputs(),
                              torch.device("cpu"), at=served.split.test_times)
    offline_top = torch.topk(offline[:, 1:], 10).indices  # catalogue positions
    hits = 0
    for user, (sequence, target, at) in enumerate(zip(
            served.split.test_inputs(), served.split.test_items, served.split.test_times,
            strict=True)):
        body = {"recent_item_ids": [served.item_ids[i - 1] for i in sequence.items],
                "timestamps": [float(t) for t in sequence.times], "k": 10,
                "exclude_seen": False, "drift_aware": False, "at": float(at)}
        response = served.client.post("/recommend", json=body)
        assert response.status_code == 200, response.text
        ranked = [item["item_id"] for item in response.json()["items"]]
        assert ranked == [served.item_ids[int(i)] for i in offline_top[user]], user
        hits += served.item_ids[target - 1] in ranked
    assert hits / len(served.split.test_items) == pytest.approx(registered, abs=1e-6)


def test_drift_is_recorded_once_per_change_point(served: Served) -> None:
    user = _user(served, 3)
    bundle = served.client.app.state.runtime.models.current.bundle
    calibrated = bundle.drift.threshold
    bundle.drift.threshold = 0.0  # every event alarms: exercises the recording path
    try:
        first = served.client.get(f"/drift/{user}").json()
        second = served.client.get(f"/drift/{user}").json()
    finally:
        bundle.drift.threshold = calibrated
    assert first["drift_detected"] and first["kind"] in ("abrupt", "gradual")
    assert first["record_id"] == second["record_id"] is not None
    assert first["change_point"]["index"] < first["event_count"]
    assert sum(w["weight"] for w in first["to_interests"]) == pytest.approx(1.0)
    history = served.client.get("/drift/history", params={"user_id": user}).json()
    assert [r["id"] for r in history["records"]] == [first["record_id"]]
    summary = served.client.get("/drift/summary", params={"bucket": "day"}).json()
    assert sum(b["drifts"] for b in summary["buckets"]) >= 1
    assert sum(b["users_checked"] for b in summary["buckets"]) >= 1
    calm = served.client.get(f"/drift/{user}").json()
    assert calm["threshold"] == pytest.approx(calibrated)
    # The score is the evidence the decision used: below the threshold exactly when no drift.
    assert calm["drift_detected"] == (calm["score"] >= calm["threshold"])


def test_events_can_queue_drift_checks(served: Served) -> None:
    user = _user(served, 4)
    event = {"event_id": "queued-1", "user_id": user, "item_id": "1", "type": "view",
             "timestamp": time.time() - 60}
    body = served.client.post("/events", params={"detect_drift": "true"},
                              json={"events": [event]}).json()
    assert body == {"accepted": 1, "duplicates": 0, "drift_checks_queued": 1}
    queue = served.client.app.state.runtime.drift_queue
    queue.join()
    assert queue.done >= 1 and queue.failed == 0


def _register_copy(served: Served, edit: str) -> str:
    """Register a changed copy of the tiny bundle as a new version and move the alias to it."""
    source = served.model.report.bundle_dir
    copy = served.root / f"bundle-{edit}"
    if edit == "perturbed":
        bundle = InterestModelBundle.load(source)
        with torch.no_grad():
            bundle.sequence_model.item_embedding.weight.add_(
                torch.randn_like(bundle.sequence_model.item_embedding.weight))
        bundle.save(copy)
    else:
        shutil.copytree(source, copy)
        if edit == "missing":
            (copy / "drift_head.pt").unlink()
        elif edit == "format":
            manifest = json.loads((copy / "manifest.json").read_text())
            (copy / "manifest.json").write_text(json.dumps({**manifest, "model_format": 99}))
    registry.use_tracking(served.target, "serving-tests")
    with mlflow.start_run():
        uri = registry.log_bundle_model(copy)
    version = registry.register(served.target, uri, served.model.report.fingerprint,
                                {"val_ndcg@10": 0.0})
    served.target.client().set_registered_model_alias("interest-model", "champion",
                                                      str(version.version))
    return str(version.version)


def test_hot_reload_switches_without_a_failed_request_and_refuses_broken_versions(
        served: Served) -> None:
    user, client = _user(served, 5), served.client
    before = client.get(f"/recommend/{user}").json()
    statuses: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            statuses.append(client.get(f"/recommend/{user}").status_code)

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        good = _register_copy(served, "perturbed")
        reload = client.post("/models/reload").json()
    finally:
        stop.set()
        worker.join()
    assert reload == {"changed": True, "version": good, "error": None}
    assert statuses and set(statuses) == {200}
    after = client.get(f"/recommend/{user}").json()
    assert after["model_version"] == good and after["items"] != before["items"]

    for edit, reason in (("missing", "drift_head.pt"), ("format", "model_format 99")):
        bad = _register_copy(served, edit)
        outcome = client.post("/models/reload").json()
        assert outcome["changed"] is False and reason in outcome["error"], outcome
        current = client.get("/models/current").json()
        assert current["version"] == good and reason in current["last_reload_error"]
        assert client.get(f"/recommend/{user}").json()["model_version"] == good, bad


def test_poller_follows_the_alias_without_a_reload_call(served: Served) -> None:
    settings = served.client.app.state.settings.model_copy(update={"model_poll_seconds": 0.3})
    with TestClient(create_app(settings)) as client:
        start = client.get("/models/current").json()["version"]
        target = "1" if start != "1" else _register_copy(served, "perturbed")
        served.target.client().set_registered_model_alias("interest-model", "champion", target)
        deadline = time.monotonic() + 30
        while client.get("/models/current").json()["version"] != target:
            assert time.monotonic() < deadline, "the poller did not pick up the alias move"
            time.sleep(0.2)
        assert client.get(f"/recommend/{_user(served)}").json()["model_version"] == target


def test_drift_scan_checks_every_user(served: Served) -> None:
    from app.services.drift_scan import all_user_ids, scan_users

    state = served.client.app.state.runtime
    users = all_user_ids(state.session_factory)
    assert len(users) == len(served.split.train)
    report = scan_users(state.session_factory, state.models.current, users[:5])
    assert report.users == 5 and 0 <= report.drifts <= 5
    # All five checks fall in this hour's bucket (users are counted once per bucket).
    after = served.client.get("/drift/summary", params={"bucket": "hour"}).json()
    assert after["buckets"][-1]["users_checked"] >= 5


def test_items_added_after_loading_are_recommendable(served: Served) -> None:
    client = served.client
    item = {"item_id": "cold-1", "title": "Space Horror Night",
            "text": "A crew fights an alien on a dark spaceship.", "categories": ["Horror"]}
    assert client.post("/items", json={"items": [item]}).status_code == 200
    runtime = client.app.state.runtime
    assert runtime.catalogue.wait_idle(timeout=30)  # embedded in the background
    bundle = runtime.models.current.bundle
    assert bundle.index_of("cold-1") is not None
    assert bundle.topics.names[bundle.item_topic("cold-1")] == "Horror"
    body = client.post("/recommend", json={"recent_item_ids": ["cold-1", "1"], "k": 3})
    assert body.status_code == 200 and len(body.json()["items"]) == 3


def test_drift_is_computed_once_per_new_event(served: Served,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from app.services.recommender import Recommender

    calls: list[str] = []
    real = Recommender.find_drift
    monkeypatch.setattr(Recommender, "find_drift",
                        lambda model, history, user_id=None: calls.append("run")
                        or real(model, history, user_id))
    user = _user(served, 6)
    first = served.client.get(f"/drift/{user}").json()
    served.client.get(f"/recommend/{user}")
    assert served.client.get(f"/drift/{user}").json()["score"] == first["score"]
    assert len(calls) <= 1  # one computation (none if an earlier test left it cached)
    cached = len(calls)
    event = {"event_id": "cache-new", "user_id": user, "item_id": "2", "type": "view",
             "timestamp": time.time() - 30}
    served.client.post("/events", json={"events": [event]})
    served.client.get(f"/drift/{user}")
    assert len(calls) == cached + 1  # a new event: computed again, once
    served.client.get(f"/recommend/{user}")
    assert len(calls) == cached + 1  # ... and reused by the next request


def test_a_ranking_is_reused_until_the_user_has_a_new_event(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.services.recommender import Recommender

    calls: list[int] = []
    real = Recommender._rank_for_user
    monkeypatch.setattr(Recommender, "_rank_for_user",
                        lambda *args: calls.append(1) or real(*args))
    user = _user(served, 7)
    first = served.client.get(f"/recommend/{user}", params={"k": 7}).json()
    again = served.client.get(f"/recommend/{user}", params={"k": 7}).json()
    # the same ranking as a new response (an impression of its own)
    assert again.pop("recommendation_id") != first.pop("recommendation_id")
    assert again == first and len(calls) == 1
    served.client.get(f"/recommend/{user}", params={"k": 8})
    assert len(calls) == 2  # other options: their own ranking
    shown = first["items"][0]["item_id"]
    event = {"event_id": "ranking-new", "user_id": user, "item_id": shown, "type": "view",
             "timestamp": time.time() - 30}
    assert served.client.post("/events", json={"events": [event]}).status_code == 200
    after = served.client.get(f"/recommend/{user}", params={"k": 7}).json()
    assert len(calls) == 3  # a new event: ranked again ...
    assert shown not in [item["item_id"] for item in after["items"]]  # ... and it is now seen


def _wait_live(client: TestClient) -> None:
    feed = client.app.state.runtime.change_feed
    deadline = time.monotonic() + 10
    while not feed.live and time.monotonic() < deadline:
        time.sleep(0.05)
    assert feed.live, "the PostgreSQL change feed never started listening"


def test_remembered_answers_skip_the_database_and_follow_other_workers_writes(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes' worth of apps on one database: a write through one makes the other
    forget its remembered ranking (PostgreSQL NOTIFY), with no database read for a hit."""
    from app.store import repository

    settings: Settings = served.client.app.state.settings
    with TestClient(create_app(settings)) as other:
        _wait_live(served.client)
        _wait_live(other)
        user = _user(served, 8)
        first = served.client.get(f"/recommend/{user}", params={"k": 5}).json()

        def no_database(*_: object) -> None:
            raise AssertionError("a remembered answer must not read the database")

        with monkeypatch.context() as patch:
            patch.setattr(repository, "user_event_state", no_database)
            patch.setattr(repository, "user_history_rows", no_database)
            patch.setattr(repository, "catalogue_rows", no_database)
            again = served.client.get(f"/recommend/{user}", params={"k": 5}).json()
            assert again.pop("recommendation_id") != first["recommendation_id"]
            assert again == {k: v for k, v in first.items() if k != "recommendation_id"}

        shown = first["items"][0]["item_id"]
        event = {"event_id": "feed-new", "user_id": user, "item_id": shown, "type": "view",
                 "timestamp": time.time() - 30}
        assert other.post("/events", json={"events": [event]}).status_code == 200
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the notification arrives within milliseconds
            after = served.client.get(f"/recommend/{user}", params={"k": 5}).json()
            if shown not in [item["item_id"] for item in after["items"]]:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the other app's write never reached this app's remembered ranking")
