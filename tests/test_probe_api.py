"""API faults found by the outsider probe, on PostgreSQL: every listing's cursor goes through
one strict codec (only 200 or 422 naming `cursor`, whatever is sent), strict types where a
lax coercion changed meaning, and `Allow` on every 405."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.config import Settings
from app.main import create_app
from tests.app_routes import endpoints
from tests.conftest import scratch_pg_database

ITEMS = [f"p{i}" for i in range(5)]
LISTINGS = ["/items", "/users/u1/events", "/drift/history"]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, empty_registry: str
           ) -> Iterator[TestClient]:
    root = Path(tmp_path_factory.mktemp("probe-api"))
    with scratch_pg_database("probeapi") as url:
        config = Settings(database_url=url, mlflow_tracking_uri=empty_registry,
                          mlflow_artifact_root=str(root / "artifacts"),
                          data_cache_dir=root / "cache", model_poll_seconds=0)
        with TestClient(create_app(config)) as test_client:
            items = [{"item_id": item, "title": f"Item {item}"} for item in ITEMS]
            assert test_client.post("/items", json={"items": items}).status_code == 200
            events = [{"event_id": f"e{i}", "user_id": "u1", "item_id": item, "type": "view",
                       "timestamp": 1_700_000_000 + i} for i, item in enumerate(ITEMS)]
            assert test_client.post("/events", json={"events": events}).status_code == 200
            yield test_client


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _refused_naming(response: Any, field: str) -> None:
    assert response.status_code == 422, (response.status_code, response.text[:300])
    body = response.json()
    assert field in {d.get("field") for d in body.get("detail", [])}, body


# ------------------------------------------------------------------------------- cursors
@pytest.mark.parametrize("cursor", [
    "AA==", "AA", _b64(b"\x00"), _b64(b"p1"), _b64(b"p1\x00"), _b64("é".encode()),
    _b64(json.dumps({"of": "items", "id": ""}).encode()),
    _b64(json.dumps({"of": "items", "id": "p\u0000"}).encode()),
    _b64(json.dumps({"of": "items", "id": 7}).encode()),
    _b64(json.dumps({"of": "items", "id": "x" * 201}).encode()),
    _b64(json.dumps({"of": "events", "at": "2024-01-01T00:00:00+00:00", "key": 1}).encode()),
])
def test_forged_catalogue_cursors_are_422s(client: TestClient, cursor: str) -> None:
    _refused_naming(client.get("/items", params={"cursor": cursor}), "cursor")


def test_the_catalogue_pages_with_its_own_cursors(client: TestClient) -> None:
    seen: list[str] = []
    cursor = None
    while True:
        page = client.get("/items", params={"limit": 2, **({"cursor": cursor} if cursor
                                                            else {})}).json()
        seen += [item["item_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        # a catalogue cursor is no cursor of another listing
        _refused_naming(client.get("/users/u1/events", params={"cursor": cursor}), "cursor")
    assert seen == ITEMS


def _forged_objects() -> st.SearchStrategy[str]:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                        st.floats(allow_nan=True), st.text(max_size=30),
                        st.sampled_from(["2024-01-01T00:00:00+00:00",
                                         "9999-12-31T23:59:59-14:00",
                                         "0001-01-01T00:00:00+14:00", "p1", "\x00"]))
    objects = st.fixed_dictionaries(
        {"of": st.sampled_from(["items", "events", "drift_records", ""])},
        optional={"at": scalars, "key": scalars, "id": scalars})
    return objects.map(lambda data: _b64(json.dumps(data).encode()))


# Texts that look like ids, or hold what no id (nor a PostgreSQL text) can: NUL among them.
ID_TEXT = st.text(alphabet=st.one_of(st.just("\x00"), st.sampled_from("p1-_.:@"),
                                     st.characters()), max_size=12)
CURSORS = st.one_of(
    st.text(max_size=60),
    # base64 of any text, with and without padding: ids of items that exist, and ones no store
    # can hold (NUL, on PostgreSQL)
    ID_TEXT.map(lambda text: _b64(text.encode())),
    ID_TEXT.map(lambda text: base64.urlsafe_b64encode(text.encode()).decode()),
    st.binary(max_size=60).map(_b64),
    st.binary(max_size=60).map(lambda raw: base64.b64encode(raw).decode()),
    _forged_objects(),
)


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(listing=st.sampled_from(LISTINGS), cursor=CURSORS)
def test_any_cursor_on_any_listing_is_200_or_a_422_naming_it(
        client: TestClient, listing: str, cursor: str) -> None:
    response = client.get(listing, params={"cursor": cursor})
    assert response.status_code in (200, 422), (listing, cursor, response.status_code,
                                                response.text[:300])
    if response.status_code == 422:
        _refused_naming(response, "cursor")


# ---------------------------------------------------------------------------- strict types
@pytest.mark.parametrize("active", ["no", "false", "False", 0, 1, "0", "true"])
def test_an_item_patch_takes_only_a_json_boolean(client: TestClient, active: object) -> None:
    response = client.patch(f"/items/{ITEMS[0]}", json={"active": active})
    _refused_naming(response, "active")
    assert client.get(f"/items/{ITEMS[0]}").json()["active"] is True
    assert client.patch(f"/items/{ITEMS[0]}", json={"active": True}).status_code == 200


@pytest.mark.parametrize("value", [False, True, "4.5", "1"])
def test_an_event_value_takes_only_a_json_number(client: TestClient, value: object) -> None:
    event = {"event_id": "strict-refused", "user_id": "u1", "item_id": ITEMS[0],
             "type": "rate", "timestamp": 1_700_000_100, "value": value}
    _refused_naming(client.post("/events", json={"events": [event]}), "value")
    for number in (4, 4.5):
        event_id = f"strict-{type(value).__name__}-{value}-{number}"
        event = {**event, "event_id": event_id, "value": number}
        assert client.post("/events", json={"events": [event]}).json()["accepted"] == 1


# ------------------------------------------------------------------------------------ 405
def test_every_405_lists_every_method_of_its_path_in_allow(client: TestClient) -> None:
    by_path: dict[str, set[str]] = {}
    for endpoint in endpoints(client.app):  # type: ignore[arg-type]
        by_path.setdefault(endpoint.path, set()).add(endpoint.method)
    assert by_path["/items"] == {"GET", "POST"}  # two routes share the path
    for template, methods in by_path.items():
        path = re.sub(r"\{[^}]+\}", "x", template)
        expected = methods | ({"HEAD"} if "GET" in methods else set())
        for method in ("OPTIONS", "TRACE", *({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}
                                             - expected)):
            response = client.request(method, path)
            assert response.status_code == 405, (method, path, response.status_code)
            allow = {m.strip() for m in response.headers.get("allow", "").split(",")}
            assert allow == expected, (method, path, response.headers.get("allow"))
            if method != "HEAD":  # headers only
                assert response.json()["error"] == "method_not_allowed"
