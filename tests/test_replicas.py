"""Serving replicas (issue 17): three workers (`serve --workers 3`, stateless over one
PostgreSQL and one registry, as replicas of docs/deploy.md are) keep each other current
through the change feed (PostgreSQL LISTEN/NOTIFY).

Each worker remembers a user's ranking and answers from memory while the change feed vouches
that the user's events did not change; an event written through one worker must therefore
reach the other two by notification, or they keep serving the stale ranking. Workers are
told apart by when they loaded their model (tests/test_multiworker_items.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TinyModel, tiny_model_database
from tests.live_server import LiveServer, live_server

pytestmark = pytest.mark.postgres
PORT = 18710
WORKERS = 3
AGREE_SECONDS = 2.0  # every worker serves a write within this (1 s with 2 workers, idle)
SEED_ITEMS = [str(n) for n in range(1, 1683)]  # ml-100k's catalogue: what the model ranks


@pytest.fixture(scope="module")
def replicas(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[list[httpx.Client]]:
    root = Path(tmp_path_factory.mktemp("replicas"))
    with tiny_model_database(tiny_model, root, "replicas") as (settings, _), \
            live_server(PORT, settings.database_url, settings.mlflow_tracking_uri, root,
                        workers=WORKERS, torch_threads="1") as live:
        pinned = _one_connection_per_worker(live)
        seeded = pinned[0].post("/items", json={"items": [
            {"item_id": item, "title": f"Movie {item}"} for item in SEED_ITEMS]})
        assert seeded.status_code == 200, seeded.text
        yield pinned
        for http in pinned:
            http.close()


def _one_connection_per_worker(server: LiveServer) -> list[httpx.Client]:
    """A ready keep-alive connection to each worker (a connection stays with its worker)."""
    pinned: dict[str, httpx.Client] = {}
    spare: list[httpx.Client] = []
    deadline = time.monotonic() + 240  # workers may still be loading the model
    while len(pinned) < WORKERS:
        assert time.monotonic() < deadline, f"reached only {len(pinned)} worker(s)"
        http = httpx.Client(base_url=server.base_url, timeout=120)
        if http.get("/readyz").status_code != 200:
            http.close()
            time.sleep(0.5)
            continue
        loaded_at = str(http.get("/models/current").json()["loaded_at"])
        if loaded_at in pinned:
            spare.append(http)
        else:
            pinned[loaded_at] = http
    for http in spare:
        http.close()
    return list(pinned.values())


def _recommended(http: httpx.Client, user: str) -> list[str]:
    response = http.get(f"/recommend/{user}", params={"k": 5, "exclude_seen": True})
    assert response.status_code == 200, response.text
    return [item["item_id"] for item in response.json()["items"]]


def _post_views(http: httpx.Client, user: str, items: list[str], start: float) -> None:
    events = [{"event_id": f"{user}-{item}-{start}", "user_id": user, "item_id": item,
               "type": "view", "timestamp": start + 60 * n} for n, item in enumerate(items)]
    response = http.post("/events", json={"events": events})
    assert response.status_code == 200, response.text


def test_events_written_through_one_worker_reach_the_other_two(
        replicas: list[httpx.Client]) -> None:
    assert len(replicas) == WORKERS
    writer = replicas[0]
    _post_views(writer, "replica-user", ["1", "2", "3", "4"], time.time() - 86_400)
    settle = time.monotonic() + 60  # the seeded catalogue is embedded in the background
    while True:
        before = [_recommended(http, "replica-user") for http in replicas]  # now remembered
        if before[0] == before[1] == before[2] or time.monotonic() > settle:
            break
        time.sleep(0.5)
    assert before[0] == before[1] == before[2], before
    # Watch what every worker recommends: with exclude_seen those items must disappear.
    _post_views(writer, "replica-user", before[0], time.time() - 3_600)
    started = time.monotonic()
    answers: list[list[str]] = []
    while time.monotonic() - started < AGREE_SECONDS:
        answers = [_recommended(http, "replica-user") for http in replicas]
        if all(not set(a) & set(before[0]) for a in answers) and len({*map(tuple, answers)}) == 1:
            print(f"{WORKERS} workers agree {1000 * (time.monotonic() - started):.0f} ms after")
            return
        time.sleep(0.02)
    raise AssertionError(f"a worker still serves the ranking from before the events: {answers}")


def test_a_new_item_reaches_every_worker(replicas: list[httpx.Client]) -> None:
    item = {"item_id": "replica-new", "title": "Space Horror Night",
            "text": "A crew fights an alien on a dark spaceship.", "categories": ["Horror"]}
    assert replicas[1].post("/items", json={"items": [item]}).status_code == 200
    started = time.monotonic()
    seen: list[int] = []
    while time.monotonic() - started < AGREE_SECONDS:
        seen = [http.post("/recommend", json={"recent_item_ids": ["replica-new", "1"], "k": 3}
                          ).status_code for http in replicas]
        if seen == [200] * WORKERS:
            return
        time.sleep(0.02)
    raise AssertionError(f"not every worker knows the new item: {seen}")
