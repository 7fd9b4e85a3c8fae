"""Ingestion over HTTP, on SQLite and PostgreSQL: atomic batches, idempotent retries."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient


def _event(i: int, **overrides: Any) -> dict[str, Any]:
    event = {"event_id": f"e{i}", "user_id": "u1", "item_id": "m1", "type": "view",
             "timestamp": 1_700_000_000 + i}
    return {**event, **overrides}


def _history(client: TestClient, user_id: str = "u1", **params: Any) -> dict[str, Any]:
    response = client.get(f"/users/{user_id}/events", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_items_upsert_and_get(client: TestClient) -> None:
    body = {"items": [{"item_id": "m1", "title": "Heat", "text": "A heist film",
                       "categories": ["Crime"], "attributes": {"year": 1995}}]}
    assert client.post("/items", json=body).json() == {"upserted": 1}
    body["items"][0]["title"] = "Heat (1995)"
    assert client.post("/items", json=body).json() == {"upserted": 1}
    item = client.get("/items/m1").json()
    assert item["title"] == "Heat (1995)"
    assert item["categories"] == ["Crime"] and item["attributes"] == {"year": 1995}


def test_unknown_item_is_a_404_naming_it(client: TestClient) -> None:
    response = client.get("/items/nope")
    assert response.status_code == 404
    assert "nope" in response.json()["message"]


def test_batch_is_stored_and_retry_counts_duplicates(client: TestClient, catalogue) -> None:
    batch = {"events": [_event(i, item_id=catalogue[i % 5]) for i in range(10)]}
    assert client.post("/events", json=batch).json() == {"accepted": 10, "duplicates": 0}
    assert client.post("/events", json=batch).json() == {"accepted": 0, "duplicates": 10}
    assert len(_history(client)["events"]) == 10


def test_events_without_ids_deduplicate_by_content(client: TestClient, catalogue) -> None:
    events = [{k: v for k, v in _event(i).items() if k != "event_id"} for i in range(3)]
    assert client.post("/events", json={"events": events}).json()["accepted"] == 3
    retry = client.post("/events", json={"events": [*events, events[0]]}).json()
    assert retry == {"accepted": 0, "duplicates": 4}


def test_repeated_id_inside_one_batch_is_one_event(client: TestClient, catalogue) -> None:
    batch = {"events": [_event(1), _event(1)]}
    assert client.post("/events", json=batch).json() == {"accepted": 1, "duplicates": 1}


def test_bad_row_rejects_whole_batch_and_names_row_and_field(client: TestClient,
                                                             catalogue) -> None:
    batch = {"events": [_event(0), _event(1, timestamp="yesterday"), _event(2, item_id="zz")]}
    response = client.post("/events", json=batch)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "validation_error" and "nothing was written" in body["message"]
    assert {"row": 1, "field": "timestamp"}.items() <= body["detail"][0].items()
    client.post("/events", json={"events": [_event(0), _event(2, item_id="zz")]})
    assert client.get("/users/u1/events").status_code == 404  # nothing of either batch stored


def test_unknown_item_row_is_named(client: TestClient, catalogue) -> None:
    response = client.post("/events", json={"events": [_event(0), _event(1, item_id="zz")]})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert (error["row"], error["field"], error["type"]) == (1, "item_id", "unknown_item")


def test_limits_and_bad_values_are_4xx(client: TestClient, catalogue, settings) -> None:
    cases = {
        "value": _event(0, value=float("nan")),
        "timestamp": _event(0, timestamp="2999-01-01T00:00:00Z"),
        "user_id": _event(0, user_id="../etc/passwd"),
        "item_id": _event(0, item_id="m1'; DROP TABLE events;--"),
        "text": _event(0, text="x" * (settings.max_text_chars + 1)),
    }
    for field, event in cases.items():
        response = client.post("/events", content=_json(event),
                               headers={"content-type": "application/json"})
        assert response.status_code == 422, (field, response.text)
        assert response.json()["detail"][0]["field"] == field
    before_1970 = client.post("/events", json={"events": [_event(0, timestamp=-5)]})
    assert before_1970.status_code == 422
    assert client.get("/users/u1/events").status_code == 404


def _json(event: dict[str, Any]) -> str:
    import json

    return json.dumps({"events": [event]})  # allows NaN, which httpx's json= refuses


def test_batch_above_limit_is_rejected(settings, catalogue) -> None:
    from app.main import create_app

    small = settings.model_copy(update={"max_batch_events": 3})
    with TestClient(create_app(small)) as client:
        response = client.post("/events", json={"events": [_event(i) for i in range(4)]})
        assert response.status_code == 422
        assert "limit of 3" in response.json()["message"]


def test_oversized_body_is_413(settings) -> None:
    from app.main import create_app

    small = settings.model_copy(update={"max_body_bytes": 2048})
    with TestClient(create_app(small)) as client:
        response = client.post("/items", json={"items": [{"item_id": "a", "title": "t" * 4000}]})
        assert response.status_code == 413
        assert response.json()["error"] == "payload_too_large"


def test_history_is_newest_first_with_cursor_pages(client: TestClient, catalogue) -> None:
    # Two events share a timestamp: ingestion order breaks the tie, as in training.
    events = [_event(i) for i in range(5)] + [_event(9, timestamp=1_700_000_004)]
    client.post("/events", json={"events": events})
    first = _history(client, limit=4)
    assert [e["event_id"] for e in first["events"]] == ["e9", "e4", "e3", "e2"]
    second = _history(client, limit=4, cursor=first["next_cursor"])
    assert [e["event_id"] for e in second["events"]] == ["e1", "e0"]
    assert second["next_cursor"] is None
    older = _history(client, before="2023-11-14T22:13:22Z")
    assert [e["event_id"] for e in older["events"]] == ["e1", "e0"]


def test_unknown_user_is_404_and_bad_cursor_is_422(client: TestClient, catalogue) -> None:
    missing = client.get("/users/ghost/events")
    assert missing.status_code == 404 and "ghost" in missing.json()["message"]
    client.post("/events", json={"events": [_event(0)]})
    response = client.get("/users/u1/events", params={"cursor": "!!"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "cursor"


def test_item_limits_name_the_field(client: TestClient, settings) -> None:
    too_big = {"blob": "x" * settings.max_json_field_bytes}
    response = client.post("/items", json={"items": [
        {"item_id": "ok", "title": "Fine"},
        {"item_id": "big", "title": "Big", "attributes": too_big},
        {"item_id": "long", "title": "Long", "text": "y" * (settings.max_text_chars + 1)}]})
    assert response.status_code == 422
    assert [(e["row"], e["field"]) for e in response.json()["detail"]] == [
        (1, "attributes"), (2, "text")]
    assert client.get("/items/ok").status_code == 404  # the valid row was not written either
