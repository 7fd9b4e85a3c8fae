"""Champion and challenger on live traffic (issue 18, point 4), on PostgreSQL with two tiny
versions that differ on purpose: v1 is the trained tiny model (the champion), v2 the same
bundle with its scorer's weights drawn at random (a deliberately bad challenger).

- the split is sticky: a user gets the same version on every request and from two app
  instances (two workers' worth of runtimes), and the share is close to the setting;
- simulated users whose next events follow what the trained model ranks first: v1's hit
  rate and MRR are above v2's, with intervals apart;
- a broken or missing challenger leaves every user on the champion, at start-up too, and
  says so in /models/current, /readyz and the metrics;
- impressions go through a bounded queue: with the writer stuck on a locked table, requests
  keep their pace and the queue's overflow is dropped and counted;
- erasure removes a user's impressions; promote-challenger moves the alias and serving
  follows; the dashboard charts the online metrics per version.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import psycopg
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient
from mlflow.exceptions import MlflowException
from prometheus_client.parser import text_string_to_metric_families

from app.core.config import Settings
from app.domain.assignment import serves_challenger
from app.main import create_app
from app.ml.bundle import InterestModelBundle
from app.services.ranking_options import RankingOptions
from tests.conftest import TinyModel, tiny_model_database, tiny_store
from tests.live_server import free_port, plain_pg_url
from tests.test_dashboard import Tab, browser  # noqa: F401  (the browser fixture)
from training import registry

MODEL = "interest-model"
SHARE = 0.5
EVENT_WINDOW = 3
PORTS = range(19100, 19200)  # this module's live servers


@dataclass
class Experiment:
    settings: Settings
    target: registry.MlflowTarget
    a: TestClient  # two app instances on one database and registry: two workers' worth
    b: TestClient
    users: list[str]
    versions: dict[str, str]  # good (v1), bad (v2), broken (v3)
    root: Path

    def set_challenger(self, version: str | None) -> None:
        client = self.target.client()
        if version is None:
            with contextlib.suppress(MlflowException):
                client.delete_registered_model_alias(MODEL, "challenger")
        else:
            client.set_registered_model_alias(MODEL, "challenger", version)


def _register_copy(target: registry.MlflowTarget, source: Path, copy: Path, fault: str
                   ) -> str:
    """Register a copy of the tiny bundle: `random` scorer weights, or `corrupt` weights."""
    bundle = InterestModelBundle.load(source)
    if fault == "random":
        torch.manual_seed(0)
        with torch.no_grad():
            for parameter in bundle.sequence_model.parameters():
                parameter.normal_()
    bundle.save(copy)
    if fault == "corrupt":
        (copy / "sequence_model.pt").write_bytes(b"\x00not a torch file\xff" * 64)
    registry.use_tracking(target, "challenger-tests")
    with mlflow.start_run():
        uri = registry.log_bundle_model(copy)
    return str(registry.register(target, uri, "challenger-tests", {"val_ndcg@10": 0.0})
               .version)


@pytest.fixture(scope="module")
def experiment(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Experiment]:
    root = tmp_path_factory.mktemp("challenger")
    with tiny_model_database(tiny_model, root, "challenger", challenger_share=SHARE,
                             impression_flush_seconds=0.05,
                             online_metrics_event_window=EVENT_WINDOW) as (settings, target):
        tiny_store(settings.database_url)  # the catalogue and the 40 tiny users' events
        source = tiny_model.report.bundle_dir
        versions = {"good": "1", "bad": _register_copy(target, source, root / "bad", "random"),
                    "broken": _register_copy(target, source, root / "broken", "corrupt")}
        target.client().set_registered_model_alias(MODEL, "challenger", versions["bad"])
        with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
            yield Experiment(settings, target, a, b, sorted(_stored_users(settings)), versions,
                             root)


def _stored_users(settings: Settings) -> list[str]:
    with psycopg.connect(plain_pg_url(settings.database_url)) as connection:
        return [row[0] for row in connection.execute("SELECT user_id FROM users")]


def _count(settings: Settings, query: str, *params: object) -> int:
    with psycopg.connect(plain_pg_url(settings.database_url)) as connection:
        row = connection.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def _metric(client: TestClient, sample_name: str, /, **labels: str) -> float | None:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == sample_name and sample.labels == labels:
                return sample.value
    return None


def _serve_challenger(experiment: Experiment, version: str) -> None:
    """Point the alias at `version` and have both instances load it."""
    experiment.set_challenger(version)
    for client in (experiment.a, experiment.b):
        client.post("/models/reload")
        current = client.get("/models/current").json()
        assert current["challenger"]["version"] == version, current


def _version_of(client: TestClient, user: str) -> str:
    response = client.get(f"/recommend/{user}", params={"k": 10})
    assert response.status_code == 200, response.text
    return response.json()["model_version"]


# ------------------------------------------------------------------------ the split
def test_the_split_is_sticky_across_requests_and_instances(experiment: Experiment) -> None:
    _serve_challenger(experiment, experiment.versions["bad"])
    good, bad = experiment.versions["good"], experiment.versions["bad"]
    ids: set[str] = set()
    seen: dict[str, str] = {}
    for user in experiment.users:
        answers = [experiment.a.get(f"/recommend/{user}"), experiment.a.get(f"/recommend/{user}"),
                   experiment.b.get(f"/recommend/{user}")]
        assert all(r.status_code == 200 for r in answers), answers[0].text
        versions = {r.json()["model_version"] for r in answers}
        assert len(versions) == 1, (user, versions)  # sticky
        expected = bad if serves_challenger(user, SHARE, experiment.settings.challenger_salt) \
            else good
        seen[user] = versions.pop()
        assert seen[user] == expected
        ids.update(r.json()["recommendation_id"] for r in answers)
        # the remembered answer (A's second request) is the same ranking, a new response
        assert answers[0].json()["items"] == answers[1].json()["items"]
    assert len(ids) == 3 * len(experiment.users)  # every response has an id of its own
    assert set(seen.values()) == {good, bad}
    # the two versions rank differently (on purpose), and each keeps its own remembered
    # rankings: a user never gets the other version's cached list
    runtime = experiment.a.app.state.runtime
    champion, challenger = runtime.models.current, runtime.models.serving_challenger
    assert challenger is not None and champion.ranking_cache is not challenger.ranking_cache
    for user, version in seen.items():
        mine = champion if version == good else challenger
        other = challenger if version == good else champion
        assert len(mine.ranking_cache._data.get(user).variants) >= 1  # type: ignore[union-attr]
        assert other.ranking_cache._data.get(user) is None
    # over many users the challenger's share is close to the setting
    many = [runtime.model_for(f"synthetic-{n}", champion)[1] for n in range(4000)]
    assert abs(many.count("challenger") / len(many) - SHARE) < 0.035
    # a HEAD request sends no body: no impression for it
    for client in (experiment.a, experiment.b):  # each instance writes its own
        assert client.app.state.runtime.impressions.wait_idle()
    before = _count(experiment.settings, "SELECT count(*) FROM impressions")
    assert before == 3 * len(experiment.users)
    assert experiment.a.head(f"/recommend/{experiment.users[0]}").status_code == 200
    # nor does a preview (the dashboard's user view), though it is answered as usual
    preview = experiment.a.get(f"/recommend/{experiment.users[0]}",
                               params={"impression": "false"})
    assert preview.status_code == 200 and preview.json()["items"]
    runtime.impressions.wait_idle()
    assert _count(experiment.settings, "SELECT count(*) FROM impressions") == before


def test_post_recommend_with_a_user_follows_the_split(experiment: Experiment) -> None:
    _serve_challenger(experiment, experiment.versions["bad"])
    user = next(u for u in experiment.users
                if serves_challenger(u, SHARE, experiment.settings.challenger_salt))
    body = {"recent_item_ids": ["1", "2", "3"], "k": 5, "user_id": user}
    answer = experiment.a.post("/recommend", json=body).json()
    assert answer["model_version"] == experiment.versions["bad"]
    anonymous = experiment.a.post("/recommend", json={**body, "user_id": None}).json()
    assert anonymous["model_version"] == experiment.versions["good"]
    experiment.a.app.state.runtime.impressions.wait_idle()
    assert _count(experiment.settings, "SELECT count(*) FROM impressions WHERE "
                  "recommendation_id = %s AND user_id = %s AND k = 5",
                  answer["recommendation_id"], user) == 1


# ------------------------------------------------------------------ the simulated stream
@dataclass
class Simulation:
    impressions: dict[str, int]  # per version
    metrics: dict[str, Any]


def _taste(experiment: Experiment, user: str) -> list[str]:
    """What the user likes next: the trained model's own top 10 for them (an oracle the
    simulated users follow, whichever version served them)."""
    runtime = experiment.a.app.state.runtime
    with runtime.session_factory() as session:
        ranked = runtime.models.current.recommend_for_user(
            session, user, RankingOptions(k=10, exclude_seen=True, drift_aware=True))
    return [item.item_id for item in ranked.items]


@pytest.fixture(scope="module")
def simulation(experiment: Experiment) -> Simulation:
    _serve_challenger(experiment, experiment.versions["bad"])
    client, rng = experiment.a, random.Random(18)
    catalogue = [str(i) for i in range(1, 1683)]
    impressions: dict[str, int] = {}
    before = client.get("/models/online-metrics", params={"k": 10}).json()["versions"]
    counted = {v["model_version"]: v["impressions"] + v["pending"] for v in before}
    for round_ in range(2):
        for user in experiment.users:
            shown = client.get(f"/recommend/{user}", params={"k": 10}).json()
            version = shown["model_version"]
            impressions[version] = impressions.get(version, 0) + 1
            liked = _taste(experiment, user)
            events = [{"event_id": f"sim-{round_}-{user}-{j}", "user_id": user,
                       "item_id": rng.choice(liked) if rng.random() < 0.85
                       else rng.choice(catalogue),
                       "type": "view", "timestamp": time.time() + 0.001 * (j + 1)}
                      for j in range(EVENT_WINDOW)]
            assert client.post("/events", json={"events": events}).status_code == 200
    client.app.state.runtime.impressions.wait_idle()
    for version, n in counted.items():  # the impressions made before the simulation
        impressions[version] = impressions.get(version, 0) + n
    metrics = client.get("/models/online-metrics", params={"k": 10, "bucket": "hour"})
    assert metrics.status_code == 200, metrics.text
    return Simulation(impressions, metrics.json())


def test_online_hit_rates_differ_the_right_way(experiment: Experiment,
                                               simulation: Simulation) -> None:
    good, bad = experiment.versions["good"], experiment.versions["bad"]
    by_version = {v["model_version"]: v for v in simulation.metrics["versions"]}
    assert set(by_version) == {good, bad}
    g, b = by_version[good], by_version[bad]
    assert (g["role"], b["role"]) == ("champion", "challenger")
    for version, entry in by_version.items():  # every impression counted, once
        assert entry["impressions"] + entry["pending"] == simulation.impressions[version]
    # the simulation's impressions are settled (3 events followed each); the sticky test's
    # earlier ones have the simulation's events after them too
    assert g["pending"] == 0 and b["pending"] == 0
    assert g["hit_rate"] > 0.8 and b["hit_rate"] < 0.4, (g, b)
    assert g["hit_rate_ci"]["low"] > b["hit_rate_ci"]["high"]
    assert g["mrr"] > b["mrr"] and g["mrr_ci"]["low"] > b["mrr_ci"]["high"]
    assert g["hit_rate_ci"]["low"] <= g["hit_rate"] <= g["hit_rate_ci"]["high"]
    for entry in (g, b):
        assert sum(bucket["impressions"] for bucket in entry["series"]) == entry["impressions"]
        assert sum(bucket["hits"] for bucket in entry["series"]) == entry["hits"]
    assert simulation.metrics["event_window"] == EVENT_WINDOW
    # the same figures from the other instance (it reads the one store)
    other = experiment.b.get("/models/online-metrics", params={"k": 10, "bucket": "hour"})
    assert other.json()["versions"] == simulation.metrics["versions"]


def test_online_metrics_refuse_bad_ranges_and_k(experiment: Experiment) -> None:
    client = experiment.a
    refused = client.get("/models/online-metrics",
                         params={"since": "2026-01-02T00:00:00Z", "until": "2026-01-01"})
    assert refused.status_code == 422
    assert [d["field"] for d in refused.json()["detail"]] == ["since"]
    for k in ("0", "101", "x"):
        bad_k = client.get("/models/online-metrics", params={"k": k})
        assert bad_k.status_code == 422 and bad_k.json()["detail"][0]["field"] == "k"
    far = client.get("/models/online-metrics", params={"until": "9999-12-31T23:59:59Z"})
    assert far.status_code == 200




def test_the_dashboard_charts_online_metrics_per_version(
        experiment: Experiment, simulation: Simulation, browser: Any  # noqa: F811
) -> None:
    app = create_app(experiment.settings)
    port = free_port(PORTS)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, name="challenger-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    tab = Tab(browser, f"http://127.0.0.1:{port}")
    try:
        tab.page.goto(f"http://127.0.0.1:{port}/dashboard?bucket=hour")
        tab.wait_ready()
        traces = tab.chart("chart-online")
        by_name = {t["name"]: t for t in traces}
        good, bad = experiment.versions["good"], experiment.versions["bad"]
        expected = {v["model_version"]: v for v in simulation.metrics["versions"]}
        for version, role in ((good, "champion"), (bad, "challenger")):
            line = by_name[f"v{version} ({role})"]
            assert line["y"] == pytest.approx([b["hit_rate"]
                                               for b in expected[version]["series"]])
        rows = tab.page.locator("#online-versions tbody tr")
        assert rows.count() == 2
        assert f"v{good}" in rows.first.inner_text()
        assert not tab.problems, tab.problems
        assert not tab.outside_requests()
    finally:
        tab.close()
        server.should_exit = True
        thread.join(timeout=30)


# ------------------------------------------------------------------ broken or missing
def test_a_broken_or_missing_challenger_leaves_everyone_on_the_champion(
        experiment: Experiment) -> None:
    client, good = experiment.a, experiment.versions["good"]
    failures = _metric(client, "driftrec_challenger_reload_failures_total") or 0
    experiment.set_challenger(experiment.versions["broken"])
    outcome = client.post("/models/reload").json()
    assert outcome["version"] == good and outcome["error"] is None  # the champion's
    current = client.get("/models/current").json()
    assert current["version"] == good
    challenger = current["challenger"]
    assert challenger["status"] == "failed" and challenger["version"] is None
    assert "sequence_model.pt is not a readable weights file" in challenger["last_reload_error"]
    assert {_version_of(client, user) for user in experiment.users} == {good}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok",
                                                                   "model": "ok"}
    assert ready.json()["challenger"].startswith("failed")
    assert _metric(client, "driftrec_challenger_reload_failures_total") == failures + 1
    assert _metric(client, "driftrec_challenger_serving") == 0
    # a worker starting now, with the broken challenger, serves the champion to everyone
    with TestClient(create_app(experiment.settings)) as fresh:
        assert fresh.get("/readyz").status_code == 200
        assert fresh.get("/models/current").json()["challenger"]["status"] == "failed"
        assert {_version_of(fresh, user) for user in experiment.users[:10]} == {good}
    # no challenger at all: the same, said as "missing"
    experiment.set_challenger(None)
    client.post("/models/reload")
    assert client.get("/models/current").json()["challenger"]["status"] == "missing"
    assert {_version_of(client, user) for user in experiment.users} == {good}
    # a good one again: its share gets it, back from the next reload on
    _serve_challenger(experiment, experiment.versions["bad"])
    assert _metric(client, "driftrec_challenger_serving") == 1
    assert _metric(client, "driftrec_challenger_info", name=MODEL,
                   version=experiment.versions["bad"], device="cpu") == 1
    assert {_version_of(client, user) for user in experiment.users} == {
        good, experiment.versions["bad"]}


# ------------------------------------------------------------------ impressions, bounded
def test_impressions_are_dropped_not_waited_for_when_the_writer_is_stuck(
        experiment: Experiment) -> None:
    _serve_challenger(experiment, experiment.versions["bad"])
    tight = experiment.settings.model_copy(update={"impression_queue_size": 2})
    users = experiment.users[:14]
    with TestClient(create_app(tight)) as client:
        runtime = client.app.state.runtime
        for user in users:  # remembered from here on: each request is a few milliseconds
            assert client.get(f"/recommend/{user}").status_code == 200
        baseline = _timed(client, users)
        runtime.impressions.wait_idle()
        written = _metric(client, "driftrec_impressions_written_total")
        dropped = _metric(client, "driftrec_impressions_dropped_total", reason="queue_full")
        locker = psycopg.connect(plain_pg_url(tight.database_url))
        release = threading.Timer(30.0, locker.rollback)  # never hang the suite
        try:
            locker.execute("LOCK TABLE impressions IN ACCESS EXCLUSIVE MODE")
            release.start()
            assert client.get(f"/recommend/{users[0]}").status_code == 200
            _wait_for_blocked_writer(tight.database_url)  # the writer holds one, stuck
            stuck = _timed(client, users[1:13])  # 2 fit in the queue, 10 do not
            assert _metric(client, "driftrec_impressions_dropped_total",
                           reason="queue_full") == (dropped or 0) + 10
            assert _metric(client, "driftrec_impressions_written_total") == written
        finally:
            locker.rollback()
            release.cancel()
            locker.close()
        assert runtime.impressions.wait_idle()
        assert _metric(client, "driftrec_impressions_written_total") == written + 3
    # not slowed: nothing waited for the database (a blocked put would wait 30 s)
    assert max(stuck) < 2.0, stuck
    assert sorted(stuck)[len(stuck) // 2] < 10 * sorted(baseline)[len(baseline) // 2] + 0.05


def _timed(client: TestClient, users: list[str]) -> list[float]:
    took = []
    for user in users:
        started = time.perf_counter()
        assert client.get(f"/recommend/{user}").status_code == 200
        took.append(time.perf_counter() - started)
    return took


def _wait_for_blocked_writer(database_url: str, timeout: float = 30.0) -> None:
    name = database_url.rsplit("/", 1)[1]
    deadline = time.monotonic() + timeout
    with psycopg.connect(plain_pg_url(database_url), autocommit=True) as connection:
        while time.monotonic() < deadline:
            row = connection.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND "
                "wait_event_type = 'Lock' AND query LIKE %s",
                (name, "%INSERT INTO impressions%")).fetchone()
            if row and row[0]:
                return
            time.sleep(0.02)
    raise AssertionError("the impression writer never reached its INSERT")


# ------------------------------------------------------------------ erasure
def test_erasure_removes_the_users_impressions(experiment: Experiment) -> None:
    client, user = experiment.a, "erase-me"
    events = [{"event_id": f"erase-me-{n}", "user_id": user, "item_id": str(n + 1),
               "type": "view", "timestamp": 1_700_000_000 + 60 * n} for n in range(12)]
    assert client.post("/events", json={"events": events}).status_code == 200
    for k in (3, 5, 7):
        assert client.get(f"/recommend/{user}", params={"k": k}).status_code == 200
    client.app.state.runtime.impressions.wait_idle()
    assert _count(experiment.settings,
                  "SELECT count(*) FROM impressions WHERE user_id = %s", user) == 3
    erased = client.delete(f"/users/{user}").json()
    assert erased["impressions_removed"] == 3 and erased["events_removed"] == 12
    assert _count(experiment.settings,
                  "SELECT count(*) FROM impressions WHERE user_id = %s", user) == 0


# ------------------------------------------------------------------ promotion (last)
def test_promote_challenger_moves_the_alias_and_serving_follows(
        experiment: Experiment) -> None:
    good, bad = experiment.versions["good"], experiment.versions["bad"]
    _serve_challenger(experiment, bad)
    a, b = experiment.a, experiment.b
    promoted = a.post("/models/promote-challenger")
    assert promoted.status_code == 200, promoted.text
    assert promoted.json() == {"champion": bad, "previous_champion": good,
                               "challenger_alias_removed": True}
    client = experiment.target.client()
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == bad
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(MODEL, "challenger")
    current = a.get("/models/current").json()
    assert current["version"] == bad and current["challenger"]["status"] == "missing"
    assert {_version_of(a, user) for user in experiment.users} == {bad}
    # the other worker follows at its alias poll (here: a reload)
    assert b.post("/models/reload").json()["version"] == bad
    assert {_version_of(b, user) for user in experiment.users} == {bad}
    again = a.post("/models/promote-challenger")
    assert again.status_code == 409 and again.json()["error"] == "no_challenger"
    # the alias moved elsewhere since this worker loaded its challenger: refused too
    _serve_challenger(experiment, good)
    experiment.set_challenger(experiment.versions["broken"])
    moved = a.post("/models/promote-challenger")
    assert moved.status_code == 409 and "reload first" in moved.json()["message"]
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == bad
    # the registry as the other tests of the run expect it (their own copies anyway)
    client.set_registered_model_alias(MODEL, "champion", good)
    experiment.set_challenger(bad)
