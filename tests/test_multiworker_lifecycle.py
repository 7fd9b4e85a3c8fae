"""Erasure and retired items reach every worker (issue 18), against `serve --workers 2` on
PostgreSQL: after `DELETE /users/{id}` on one worker the other answers 404 for the user at
once (it had the ranking remembered); ingestion racing an erasure over HTTP loses no event
acknowledged after it and keeps none acknowledged before it; a retired item is recommended
by neither worker within a second of the change.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TinyModel, tiny_model_database
from tests.live_server import LiveServer, live_server, stored_event_ids
from tests.test_multiworker_items import _pin

PORT = 18501
ITEMS = [str(n) for n in range(1, 1683)]  # every trained id of the tiny model
HISTORY = [str(n) for n in (1, 7, 50, 100, 121, 172, 174, 181, 204, 210, 222, 258)]


@pytest.fixture(scope="module")
def server(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[LiveServer, str]]:
    root = Path(tmp_path_factory.mktemp("multiworker-lifecycle"))
    with tiny_model_database(tiny_model, root, "mwlife") as (settings, _), \
            live_server(PORT, settings.database_url, settings.mlflow_tracking_uri, root,
                        workers=2, torch_threads="1") as live:
        yield live, settings.database_url


@pytest.fixture(scope="module")
def workers(server: tuple[LiveServer, str]) -> Iterator[list[httpx.Client]]:
    pinned = _pin(server[0], 1)
    seeded = pinned[0][0].post("/items", json={"items": [
        {"item_id": item, "title": f"Movie {item}"} for item in ITEMS]})
    assert seeded.status_code == 200, seeded.text
    yield [per_worker[0] for per_worker in pinned]
    for per_worker in pinned:
        for http in per_worker:
            http.close()


def _events(user: str, prefix: str, items: list[str], start: int = 0) -> list[dict[str, Any]]:
    return [{"event_id": f"{prefix}-{n}", "user_id": user, "item_id": item, "type": "view",
             "timestamp": 1_700_000_000 + 3600 * (start + n)} for n, item in enumerate(items)]


def test_an_erased_user_is_forgotten_by_every_worker_at_once(
        workers: list[httpx.Client]) -> None:
    first, second = workers
    user = "mw-erase"
    assert first.post("/events", json={"events": _events(user, user, HISTORY)}
                      ).status_code == 200
    for http in workers:  # both remember a ranking of the user now
        for _ in range(2):
            assert http.get(f"/recommend/{user}").status_code == 200
    erased = first.delete(f"/users/{user}")
    assert erased.status_code == 200 and erased.json()["events_removed"] == len(HISTORY)
    started = time.monotonic()
    while second.get(f"/recommend/{user}").status_code != 404:
        assert time.monotonic() - started < 1.0, "the other worker still serves the user"
        time.sleep(0.005)
    print(f"the other worker forgot the user {1000 * (time.monotonic() - started):.0f} ms "
          "after the erasure's answer")
    assert first.get(f"/recommend/{user}").status_code == 404
    assert second.delete(f"/users/{user}").status_code == 404


def test_ingestion_racing_an_erasure(workers: list[httpx.Client],
                                     server: tuple[LiveServer, str]) -> None:
    """Batches posted back to back through both workers while one erasure runs: a batch
    acknowledged before the erasure started is gone, one sent after it answered is stored,
    and a batch in between is stored whole or not at all."""
    user = "mw-race"
    batches: list[tuple[float, float, list[str]]] = []  # (sent, acknowledged, event ids)
    stop = threading.Event()

    def ingest(http: httpx.Client, lane: int) -> None:
        n = 0
        while not stop.is_set():
            events = _events(user, f"race-{lane}-{n}", HISTORY[:3], start=n * 3)
            sent = time.monotonic()
            response = http.post("/events", json={"events": events})
            assert response.status_code == 200, response.text
            batches.append((sent, time.monotonic(), [e["event_id"] for e in events]))
            n += 1

    threads = [threading.Thread(target=ingest, args=(http, lane))
               for lane, http in enumerate(workers)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    erase_started = time.monotonic()
    answer = workers[0].delete(f"/users/{user}")
    erase_answered = time.monotonic()
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert answer.status_code == 200, answer.text
    stored = stored_event_ids(server[1], "race-")
    before = [ids for _, acked, ids in batches if acked < erase_started]
    after = [ids for sent, _, ids in batches if sent > erase_answered]
    assert before and after, (len(before), len(after))
    assert not any(set(ids) & stored for ids in before), "an event acknowledged before survived"
    assert all(set(ids) <= stored for ids in after), "an event acknowledged after was lost"
    for _, _, ids in batches:  # atomic: a batch is stored whole or not at all
        assert set(ids) <= stored or not set(ids) & stored
    print(f"{len(before)} batches before, {len(after)} after, "
          f"{len(batches) - len(before) - len(after)} during the erasure; "
          f"{answer.json()['events_removed']} events erased")


def test_a_retired_item_is_recommended_by_no_worker_within_a_second(
        workers: list[httpx.Client]) -> None:
    first, second = workers
    user = "mw-retire"
    assert first.post("/events", json={"events": _events(user, user, HISTORY)}
                      ).status_code == 200

    def served(http: httpx.Client) -> list[str]:
        body = http.get(f"/recommend/{user}", params={"k": 20}).json()
        session = http.post("/recommend", json={"recent_item_ids": HISTORY, "k": 20}).json()
        return [i["item_id"] for i in body["items"]] + [i["item_id"] for i in session["items"]]

    top = served(first)[0]
    assert top in served(second)
    assert second.patch(f"/items/{top}", json={"active": False}).status_code == 200
    started = time.monotonic()
    while any(top in served(http) for http in workers):
        assert time.monotonic() - started < 1.0, "a worker still recommends the retired item"
        time.sleep(0.01)
    print(f"both workers stopped recommending it {1000 * (time.monotonic() - started):.0f} ms "
          "after the change")
    similar = first.get(f"/items/{HISTORY[0]}/similar", params={"k": 100}).json()["items"]
    assert top not in [s["item_id"] for s in similar]
    assert first.patch(f"/items/{top}", json={"active": True}).status_code == 200
    started = time.monotonic()
    while not all(top in served(http) for http in workers):
        assert time.monotonic() - started < 1.0, "a worker does not serve it again"
        time.sleep(0.01)
