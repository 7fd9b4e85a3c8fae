"""Issue 18 against the served tiny model, on SQLite and PostgreSQL: retired and windowed
items are never recommended (nor returned as similar), their events still count; similar
items from the item table (and the text encoder for cold-start items); explanations on
`/recommend`; an erasure makes the worker forget the user at once."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from app.store.migrate import upgrade_head
from tests.conftest import TinyModel, scratch_pg_database

ITEMS = [str(n) for n in range(1, 1683)]  # ml-100k: every trained id of the tiny model
USER = "life-1"
HISTORY = [str(n) for n in (1, 7, 50, 100, 121, 172, 174, 181, 204, 210, 222, 258)]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def client(request: pytest.FixtureRequest, tiny_model: TinyModel,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = Path(tmp_path_factory.mktemp(f"lifecycle-{request.param}"))
    shutil.copy(tiny_model.root / "mlflow.db", root / "mlflow.db")

    def run(url: str) -> Iterator[TestClient]:
        settings = Settings(database_url=url, mlflow_tracking_uri=f"sqlite:///{root}/mlflow.db",
                            mlflow_artifact_root=str(root / "artifacts"), model_poll_seconds=0,
                            data_cache_dir=root / "cache")
        with TestClient(create_app(settings)) as test_client:
            items = [{"item_id": i, "title": f"Movie {i}"} for i in {*ITEMS, *HISTORY}]
            assert test_client.post("/items", json={"items": items}).status_code == 200
            events = [{"event_id": f"{USER}-{n}", "user_id": USER, "item_id": item,
                       "type": "view", "timestamp": 1_700_000_000 + 3600 * n}
                      for n, item in enumerate(HISTORY)]
            assert test_client.post("/events", json={"events": events}).status_code == 200
            yield test_client

    if request.param == "sqlite":
        url = f"sqlite:///{root / 'store.db'}"
        upgrade_head(url)
        yield from run(url)
    else:
        with scratch_pg_database("lifecycle") as url:
            yield from run(url)


def _recommended(client: TestClient, k: int = 30) -> list[str]:
    response = client.get(f"/recommend/{USER}", params={"k": k, "drift_aware": "false"})
    assert response.status_code == 200, response.text
    return [item["item_id"] for item in response.json()["items"]]


def _session_recommended(client: TestClient, k: int = 30) -> list[str]:
    response = client.post("/recommend", json={"recent_item_ids": HISTORY[-5:], "k": k,
                                               "drift_aware": False})
    assert response.status_code == 200, response.text
    return [item["item_id"] for item in response.json()["items"]]


def _until(check: Any, within: float = 1.0) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within, "not within a second"
        time.sleep(0.01)
    return time.monotonic() - started


def test_a_retired_item_is_never_recommended_and_its_events_still_count(
        client: TestClient) -> None:
    top = _recommended(client)[0]
    profile_before = client.get(f"/interest-profile/{USER}").json()
    assert client.patch(f"/items/{top}", json={"active": False}).status_code == 200
    _until(lambda: top not in _recommended(client) and top not in _session_recommended(client))
    # a history item retired: still in the history, the profile does not move
    assert client.patch(f"/items/{HISTORY[0]}", json={"active": False}).status_code == 200
    _until(lambda: client.get("/items", params={"active": "false"}).json()["items"] != [])
    profile_after = client.get(f"/interest-profile/{USER}").json()
    assert profile_after["long_term"] == profile_before["long_term"]
    assert profile_after["event_count"] == len(HISTORY)
    assert client.post("/recommend", json={"recent_item_ids": [HISTORY[0], "2"]}
                       ).status_code == 200  # a history naming it is still understood
    # brought back: recommended again
    assert client.patch(f"/items/{top}", json={"active": True}).status_code == 200
    _until(lambda: _recommended(client)[0] == top)
    client.patch(f"/items/{HISTORY[0]}", json={"active": True})


def test_an_item_outside_its_window_is_not_recommended(client: TestClient) -> None:
    top = _recommended(client)[0]
    now = datetime.now(UTC)
    # the window closes four seconds from now: recommended until then, not after
    closes = now + timedelta(seconds=4)
    assert client.patch(f"/items/{top}", json={"available_until": closes.isoformat()}
                        ).status_code == 200
    time.sleep(0.3)
    assert _recommended(client)[0] == top  # window still open
    assert _recommended(client)[0] == top  # remembered
    time.sleep(max(0.0, (closes - datetime.now(UTC)).total_seconds()) + 0.1)
    assert top not in _recommended(client)  # the remembered ranking did not outlive it
    opened = {"available_until": None, "available_from": (now - timedelta(days=1)).isoformat()}
    assert client.patch(f"/items/{top}", json=opened).status_code == 200
    _until(lambda: _recommended(client)[0] == top)


def test_a_deleted_item_is_not_recommended(client: TestClient) -> None:
    ranked = _session_recommended(client)
    top = next(i for i in ranked if i not in HISTORY)  # no event references it
    assert client.delete(f"/items/{top}").json()["deleted"] is True
    _until(lambda: top not in _session_recommended(client))
    back = {"item_id": top, "title": f"Movie {top}"}  # as it was: the same row serves
    assert client.post("/items", json={"items": [back]}).status_code == 200
    _until(lambda: _session_recommended(client) == ranked)


def test_a_deleted_item_has_no_similar_items(client: TestClient) -> None:
    """One answer for a deleted item on every route: `GET /items/{id}` and `/similar` are
    404 alike, and both answer again once the item is stored again."""
    ranked = _session_recommended(client)
    gone = next(i for i in reversed(ranked) if i not in HISTORY)  # no event references it
    assert client.get(f"/items/{gone}/similar").status_code == 200
    assert client.delete(f"/items/{gone}").json()["deleted"] is True
    assert client.get(f"/items/{gone}").status_code == 404
    _until(lambda: client.get(f"/items/{gone}/similar").status_code == 404)
    assert client.post("/items", json={"items": [{"item_id": gone, "title": f"Movie {gone}"}]}
                       ).status_code == 200
    _until(lambda: client.get(f"/items/{gone}/similar").status_code == 200)


def test_similar_items_from_the_item_table(client: TestClient) -> None:
    response = client.get("/items/1/similar", params={"k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["source"] == "item_table" and body["model_version"] == "1"
    similar = body["items"]
    assert len(similar) == 5 and "1" not in [s["item_id"] for s in similar]
    assert all(s["topic"] for s in similar)
    scores = [s["similarity"] for s in similar]
    assert scores == sorted(scores, reverse=True) and -1.0 <= scores[-1] <= scores[0] <= 1.0
    # retired neighbours are left out
    first = similar[0]["item_id"]
    assert client.patch(f"/items/{first}", json={"active": False}).status_code == 200
    _until(lambda: first not in [s["item_id"] for s in client.get(
        "/items/1/similar", params={"k": 5}).json()["items"]])
    client.patch(f"/items/{first}", json={"active": True})
    assert client.get("/items/unknown-x/similar").status_code == 404
    assert client.get("/items/1/similar", params={"k": 101}).status_code == 422


def test_similar_items_of_a_cold_start_item_come_from_its_text(client: TestClient) -> None:
    items = [{"item_id": "cold-a", "title": "Alien horror", "categories": ["Horror"],
              "text": "A crew fights an alien on a dark spaceship."},
             {"item_id": "cold-b", "title": "Space horror", "categories": ["Horror"],
              "text": "An alien hunts the crew of a dark spaceship."}]
    assert client.post("/items", json={"items": items}).status_code == 200
    _until(lambda: client.get("/items/cold-a/similar").status_code == 200, within=5.0)
    body = client.get("/items/cold-a/similar", params={"k": 3}).json()
    assert body["source"] == "text"
    assert body["items"][0]["item_id"] == "cold-b"  # the nearest text


def test_recommendations_say_why(client: TestClient) -> None:
    items = client.get(f"/recommend/{USER}", params={"k": 10}).json()["items"]
    window = set(HISTORY[-20:])
    assert all(1 <= len(i["because"]) <= 2 for i in items)
    for item in items:
        reasons = item["because"]
        assert all(r["item_id"] in window and r["title"] for r in reasons)
        sims = [r["similarity"] for r in reasons]
        assert sims == sorted(sims, reverse=True) and all(s > 0 for s in sims)
    # the top reason is the history item most similar by the served item table
    first = items[0]
    neighbours = client.get(f"/items/{first['item_id']}/similar",
                            params={"k": 100}).json()["items"]
    order = [n["item_id"] for n in neighbours if n["item_id"] in window]
    if order:
        assert first["because"][0]["item_id"] == order[0]
    session = client.post("/recommend", json={"recent_item_ids": HISTORY[-3:], "k": 5}).json()
    assert all(r["item_id"] in HISTORY[-3:] for i in session["items"] for r in i["because"])


def test_an_erased_user_is_forgotten_at_once(client: TestClient) -> None:
    user = "life-erase"
    events = [{"event_id": f"{user}-{n}", "user_id": user, "item_id": item, "type": "view",
               "timestamp": 1_700_000_000 + 3600 * n} for n, item in enumerate(HISTORY)]
    assert client.post("/events", json={"events": events}).status_code == 200
    assert client.get(f"/recommend/{user}").status_code == 200  # remembered now
    assert client.get(f"/drift/{user}").status_code == 200
    erased = client.delete(f"/users/{user}").json()
    assert erased["events_removed"] == len(HISTORY) and erased["drift_checks_removed"] == 1
    assert client.get(f"/recommend/{user}").status_code == 404
    assert client.get(f"/interest-profile/{user}").status_code == 404
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    served = runtime.models.current
    assert served.ranking_cache.get(user, None, None) is None
    assert user not in served.ranking_cache._data and user not in served.drift_cache._data
