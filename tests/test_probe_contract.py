"""Contract defects the outsider probe found (issue 12, points 5, 8 and 9), on both backends.

5. The API description's access is a setting, the key schemes are declared in OpenAPI, and
   API 401s carry a `WWW-Authenticate` challenge.
8. A 500 is logged with the route template, never the path (paths carry user ids).
9. What the handlers enforce is in the schema (k <= 100, the epoch range, no NUL in text,
   `before` a timestamp), `POST /recommend`'s k error points at the body, `HEAD` answers on
   every GET route, and a reused event_id with other content is named in the response.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api import deps
from app.core.config import Settings
from app.main import create_app
from tests.app_routes import endpoints

READER = "reader-k3y-probe"
MAX_EPOCH_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
KEYS = f"{READER}:read"


def _keyed(settings: Settings, **overrides: Any) -> TestClient:
    return TestClient(create_app(settings.model_copy(update={"api_keys": KEYS, **overrides})))


# ------------------------------------------------------------------------------ point 5
def test_the_description_needs_a_key_when_docs_are_not_public(settings: Settings) -> None:
    with _keyed(settings, public_docs=False) as client:
        refused = client.get("/openapi.json")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        allowed = client.get("/openapi.json", headers={"Authorization": f"Bearer {READER}"})
        assert allowed.status_code == 200 and allowed.json()["paths"]
        assert "/openapi.json" not in allowed.json()["paths"]
        for page in ("/docs", "/redoc"):
            assert client.get(page, headers={"Authorization": f"Bearer {READER}"}
                              ).status_code == 404
    with _keyed(settings) as client:  # the default: public, as the README says
        for path in ("/openapi.json", "/docs", "/redoc"):
            assert client.get(path).status_code == 200, path


def test_openapi_declares_the_key_schemes_on_keyed_operations(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {"type": "http", "scheme": "bearer",
                                     "description": schemes["bearerAuth"]["description"]}
    assert schemes["basicAuth"]["scheme"] == "basic"
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            keyed = "401" in operation["responses"]
            assert keyed == (path not in ("/healthz", "/readyz")), (method, path)
            assert (operation.get("security") is not None) == keyed, (method, path)


def test_api_401s_carry_a_bearer_challenge(settings: Settings) -> None:
    with _keyed(settings) as client:
        for headers in ({}, {"Authorization": "Bearer wrong-key"}):
            refused = client.get("/drift/history", headers=headers)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == 'Bearer realm="DriftRec"'
        forbidden = client.post("/items", json={"items": []},
                                headers={"Authorization": f"Bearer {READER}"})
        assert forbidden.status_code == 403 and "www-authenticate" not in forbidden.headers


# ------------------------------------------------------------------------------ point 8
def test_a_500_is_logged_with_the_route_template(settings: Settings,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    from app.store import repository

    def broken(*_: Any, **__: Any) -> list[Any]:
        raise RuntimeError("the store broke")

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        client.post("/items", json={"items": [{"item_id": "m1", "title": "M"}]})
        client.post("/events", json={"events": [{"user_id": "alice@example.com",
                                                 "item_id": "m1", "type": "view",
                                                 "timestamp": 1_700_000_000}]})
        monkeypatch.setattr(repository, "user_events_page", broken)
        caplog.set_level(logging.INFO)
        response = client.get("/users/alice@example.com/events")
    assert response.status_code == 500
    errors = [r for r in caplog.records if r.name == "driftrec.errors"]
    assert [r.getMessage() for r in errors] == [
        "unhandled error on GET /users/{user_id}/events"]
    ours = [r for r in caplog.records if r.name.startswith("driftrec")]  # not httpx's own
    assert ours and not any("alice@example.com" in r.getMessage() for r in ours)


# ------------------------------------------------------------------------------ point 9
def _parameter(schema: dict[str, Any], path: str, name: str) -> dict[str, Any]:
    [found] = [p for p in schema["paths"][path]["get"]["parameters"] if p["name"] == name]
    return found["schema"]


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def test_the_schema_states_what_the_handlers_enforce(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert _parameter(schema, "/recommend/{user_id}", "k")["maximum"] == 100
    components = schema["components"]["schemas"]
    assert components["RecommendRequest"]["properties"]["k"]["maximum"] == 100
    before = _parameter(schema, "/users/{user_id}/events", "before")
    timestamp = components["EventIn"]["properties"]["timestamp"]
    for node in (before, timestamp):
        forms = [f for option in node["anyOf"] for f in option.get("anyOf", [option])]
        number = next(f for f in forms if f.get("type") == "number")
        text = next(f for f in forms if f.get("type") == "string")
        assert (number["minimum"], number["maximum"]) == (0, MAX_EPOCH_SECONDS)
        assert text["format"] == "date-time" and text["pattern"].startswith("^(19[7-9]")
    event_text = components["EventIn"]["properties"]["text"]
    text_forms = event_text.get("anyOf", [event_text])
    assert any(f.get("pattern") == "^[^\\u0000]*$" for f in text_forms)
    assert components["ItemIn"]["properties"]["title"]["pattern"] == "^[^\\u0000]*$"


@pytest.fixture
def with_stub_model(client: TestClient) -> Iterator[TestClient]:
    """A served model is required before the body is read (a 503 otherwise)."""
    client.app.dependency_overrides[deps.get_model] = lambda: object()  # type: ignore[attr-defined]
    yield client
    client.app.dependency_overrides.clear()  # type: ignore[attr-defined]


def test_a_k_out_of_range_in_the_body_is_named_in_the_body(with_stub_model: TestClient
                                                            ) -> None:
    response = with_stub_model.post("/recommend", json={"recent_item_ids": ["1"], "k": 101})
    assert response.status_code == 422
    assert [d["loc"] for d in response.json()["detail"]] == [["body", "k"]]


def test_head_answers_on_every_get_route(client: TestClient) -> None:
    healthz = client.head("/healthz")
    assert healthz.status_code == 200 and healthz.content == b""
    assert int(healthz.headers["content-length"]) > 0  # the GET's length, no body
    assert client.head("/users/nobody/events").status_code == 404
    assert client.head("/events").status_code == 405  # POST only
    values = {"user_id": "u1", "item_id": "m1", "name": "common.js"}
    for endpoint in endpoints(client.app):
        if endpoint.method != "GET":
            continue
        path = endpoint.path
        for name, value in values.items():
            path = path.replace(f"{{{name}}}", value)
        assert client.head(path).status_code == client.get(path).status_code, path


def test_a_reused_event_id_with_other_content_is_named(client: TestClient,
                                                       catalogue: list[str]) -> None:
    event = {"event_id": "e1", "user_id": "u1", "item_id": catalogue[0], "type": "view",
             "timestamp": 1_700_000_000}
    assert client.post("/events", json={"events": [event]}).json() == {
        "accepted": 1, "duplicates": 0}
    assert client.post("/events", json={"events": [event]}).json() == {
        "accepted": 0, "duplicates": 1}  # a retry: same content, no conflict
    other = {**event, "item_id": catalogue[1]}
    fresh = {**event, "event_id": "e2"}
    body = client.post("/events", json={"events": [fresh, other, {**fresh, "value": 5.0}]}
                       ).json()
    assert body == {"accepted": 1, "duplicates": 2,
                    "conflicts": [{"row": 1, "event_id": "e1"}, {"row": 2, "event_id": "e2"}]}
    stored = client.get("/users/u1/events").json()["events"]
    assert {e["event_id"]: (e["item_id"], e["value"]) for e in stored} == {
        "e1": (catalogue[0], None), "e2": (catalogue[0], None)}


def test_docs_setting_is_documented() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "DRIFTREC_PUBLIC_DOCS" in readme
