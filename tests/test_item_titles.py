"""Item titles remembered per change-feed epoch: one read per item until an item changes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.main import create_app
from app.ml.encoder import ItemTextEncoder
from app.services.change_feed import ChangeFeed
from app.services.item_titles import ItemTitles
from app.services.recommender import Recommender
from app.services.served_model import ServedModel
from app.store import repository
from app.store.db import transaction
from tests.bundles import small_bundle


def _upsert(factory: sessionmaker[Session], titles: dict[str, str]) -> None:
    with transaction(factory) as session:
        repository.upsert_items(session, [{"item_id": i, "title": t, "text": None,
                                           "categories": [], "attributes": {}}
                                          for i, t in titles.items()])


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[set[str]]:
    """The ids of each titles query the store answers."""
    seen: list[set[str]] = []
    read = repository.item_titles

    def counting(session: Session, item_ids: Any) -> dict[str, str]:
        seen.append(set(item_ids))
        return read(session, item_ids)

    monkeypatch.setattr(repository, "item_titles", counting)
    return seen


def test_titles_are_read_once_per_epoch_and_again_after_an_item_change(
        factory: sessionmaker[Session], reads: list[set[str]]) -> None:
    _upsert(factory, {"a": "A", "b": "B"})
    feed = ChangeFeed()
    feed.set_live(True)
    titles = ItemTitles(feed, 100)
    with factory() as session:
        assert titles.of(session, ["a", "b", "gone"]) == {"a": "A", "b": "B"}
        assert titles.of(session, ["a", "gone"]) == {"a": "A"}  # from memory, absence too
        assert reads == [{"a", "b", "gone"}]
        _upsert(factory, {"a": "A2"})
        feed.items_changed(["a"])  # what the write path and every listener do after it
        assert titles.of(session, ["a", "b"]) == {"a": "A2", "b": "B"}
        assert reads[1:] == [{"a", "b"}]


def test_without_a_live_feed_or_a_bound_every_call_reads_the_store(
        factory: sessionmaker[Session], reads: list[set[str]]) -> None:
    _upsert(factory, {"a": "A"})
    live = ChangeFeed()
    live.set_live(True)
    # not listening (nothing can be vouched for), no feed, no room
    for titles in (ItemTitles(ChangeFeed(), 100), ItemTitles(None, 100), ItemTitles(live, 0)):
        with factory() as session:
            assert titles.of(session, ["a"]) == titles.of(session, ["a"]) == {"a": "A"}
    assert reads == [{"a"}] * 6


def test_titles_read_while_an_item_changed_are_not_kept(
        factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    _upsert(factory, {"a": "A"})
    feed = ChangeFeed()
    feed.set_live(True)
    titles = ItemTitles(feed, 100)
    read = repository.item_titles

    def read_then_change(session: Session, item_ids: Any) -> dict[str, str]:
        found = read(session, item_ids)
        _upsert(factory, {"a": "A2"})  # commits after the read, before it is kept
        feed.items_changed(["a"])
        return found

    monkeypatch.setattr(repository, "item_titles", read_then_change)
    with factory() as session:
        assert titles.of(session, ["a"]) == {"a": "A"}
    monkeypatch.setattr(repository, "item_titles", read)
    with factory() as session:
        assert titles.of(session, ["a"]) == {"a": "A2"}


def test_at_most_max_items_are_kept(factory: sessionmaker[Session]) -> None:
    _upsert(factory, {f"i{n}": f"T{n}" for n in range(10)})
    feed = ChangeFeed()
    feed.set_live(True)
    titles = ItemTitles(feed, 4)
    with factory() as session:
        for n in range(10):
            assert titles.of(session, [f"i{n}"]) == {f"i{n}": f"T{n}"}
            assert len(titles) <= 4


def test_a_recommendation_names_an_items_new_title_right_after_its_upsert(
        settings: Settings) -> None:
    bundle = small_bundle(ItemTextEncoder.pretrained("cpu", num_layers=1), 12)
    app = create_app(settings)
    with TestClient(app) as client:
        runtime = app.state.runtime
        runtime.models.champion.served = Recommender(
            ServedModel(bundle=bundle, name="m", version="1", alias="champion", run_id=None,
                        device="cpu", loaded_at=datetime.now(UTC)),
            settings, runtime.session_factory, runtime.change_feed)
        items = [{"item_id": i, "title": f"Old {i}"} for i in bundle.item_ids]
        assert client.post("/items", json={"items": items}).status_code == 200
        events = [{"user_id": "u1", "item_id": f"m{n}", "type": "view",
                   "timestamp": f"2024-01-01T00:0{n}:00Z"} for n in range(5)]
        assert client.post("/events", json={"events": events}).status_code == 200
        for prefix in ("Old", "New"):
            if prefix == "New":
                renamed = [{**item, "title": f"New {item['item_id']}"} for item in items]
                assert client.post("/items", json={"items": renamed}).status_code == 200
            for path, body in (("/recommend/u1?exclude_seen=false", None),
                               ("/recommend", {"recent_item_ids": ["m1", "m2"]})):
                response = (client.get(path) if body is None else client.post(path, json=body))
                assert response.status_code == 200, response.text
                named = [(i["item_id"], i["title"]) for i in response.json()["items"]]
                named += [(r["item_id"], r["title"]) for i in response.json()["items"]
                          for r in i["because"]]
                assert named and all(title == f"{prefix} {i}" for i, title in named), named
