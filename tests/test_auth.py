"""Auth (issue 6, item 6): every endpoint, enumerated from the app itself, refuses a missing or
wrong key (401) and a key without its scope (403); the admin actions need `admin`; keys are
kept and compared as SHA-256 digests, in constant time, and never reach the logs.

A new endpoint is covered without touching this file: it needs a key unless it is one of the
documented public paths below, and its scope follows the rule in `expected_scope`.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core import security
from app.core.config import Settings
from app.core.security import hash_key, parse_api_keys
from app.main import create_app
from tests.app_routes import Endpoint, endpoints

READER, WRITER, ADMIN = "reader-k3y-5e1d", "writer-k3y-77aa", "admin-k3y-c0de"
READ_WRITE = "readwrite-k3y-0b0e"
# A key given to the service only as its digest: the plaintext never enters its environment.
DIGEST_ONLY = "digest-only-k3y-9f9f"
KEYS = (f"{READER}:read;{WRITER}:write;{ADMIN}:admin;{READ_WRITE}:read,write;"
        f"sha256={hash_key(DIGEST_ONLY).hex()}:read")
ALL_SECRETS = (READER, WRITER, ADMIN, READ_WRITE, DIGEST_ONLY)
WRONG = "not-a-k3y-at-all"

# Open without a key, documented: orchestrator probes, the API description, and the
# dashboard's static files (scripts and styles, no data).
PUBLIC = {"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
          "/dashboard/static/{name}"}
# Explicit scopes where the method alone does not say it.
SCOPES = {("POST", "/recommend"): "read", ("POST", "/models/reload"): "admin",
          ("DELETE", "/users/{user_id}"): "admin", ("DELETE", "/items/{item_id}"): "admin"}
# A key holding everything but the scope.
LACKING = {"read": WRITER, "write": READER, "admin": READ_WRITE}
PATH_VALUES = {"user_id": "u1", "item_id": "m1", "name": "common.js"}


def expected_scope(endpoint: Endpoint) -> str:
    """Reads need `read`, writes `write`; any other POST on models or drift (reload, a drift
    batch) is an admin action."""
    explicit = SCOPES.get((endpoint.method, endpoint.path))
    if explicit:
        return explicit
    if endpoint.method == "GET":
        return "read"
    if endpoint.path.startswith(("/models", "/drift")):
        return "admin"
    return "write"


@pytest.fixture
def keyed(pg_database: str, tmp_path: Path, empty_registry: str) -> Iterator[TestClient]:
    settings = Settings(database_url=pg_database, mlflow_tracking_uri=empty_registry,
                        mlflow_artifact_root=str(tmp_path / "artifacts"),
                        data_cache_dir=tmp_path / "cache", model_poll_seconds=0, api_keys=KEYS)
    with TestClient(create_app(settings)) as client:
        yield client


def _protected(client: TestClient) -> list[Endpoint]:
    return [e for e in endpoints(client.app) if e.path not in PUBLIC]


def _url(endpoint: Endpoint) -> str:
    path = endpoint.path
    for name, value in PATH_VALUES.items():
        path = path.replace(f"{{{name}}}", value)
    assert "{" not in path, f"no test value for a parameter of {endpoint.path}"
    return path


def _call(client: TestClient, endpoint: Endpoint, key: str | None = None,
          scheme: str = "Bearer") -> int:
    headers = {}
    if key is not None:
        token = base64.b64encode(f"user:{key}".encode()).decode() if scheme == "Basic" else key
        headers["Authorization"] = f"{scheme} {token}"
    return client.request(endpoint.method, _url(endpoint), headers=headers).status_code


def test_the_enumeration_sees_every_endpoint(keyed: TestClient) -> None:
    found = {(e.method, e.path) for e in endpoints(keyed.app)}
    assert {("POST", "/events"), ("POST", "/items"), ("GET", "/users/{user_id}/events"),
            ("POST", "/models/reload"), ("GET", "/drift/history"), ("GET", "/recommend/{user_id}"),
            ("GET", "/healthz")} <= found
    assert len(_protected(keyed)) >= 14


def test_every_endpoint_refuses_a_missing_or_wrong_key(keyed: TestClient) -> None:
    refused = {}
    for endpoint in _protected(keyed):
        refused[f"{endpoint.method} {endpoint.path}"] = (
            _call(keyed, endpoint), _call(keyed, endpoint, WRONG),
            _call(keyed, endpoint, WRONG, "Basic"), _call(keyed, endpoint, "", "Bearer"),
            _call(keyed, endpoint, READER, "Token"))
    open_doors = {name: codes for name, codes in refused.items() if set(codes) != {401}}
    assert not open_doors, f"endpoints not answering 401 without a valid key: {open_doors}"


def test_every_endpoint_refuses_a_key_without_its_scope(keyed: TestClient) -> None:
    wrong: dict[str, tuple[str, int, int]] = {}
    for endpoint in _protected(keyed):
        scope = expected_scope(endpoint)
        lacking = _call(keyed, endpoint, LACKING[scope])
        holding = _call(keyed, endpoint, {"read": READER, "write": WRITER,
                                          "admin": ADMIN}[scope])
        if lacking != 403 or holding in (401, 403):
            wrong[f"{endpoint.method} {endpoint.path}"] = (scope, lacking, holding)
    assert not wrong, f"(expected scope, status without it, status with it): {wrong}"


def test_admin_actions_need_admin(keyed: TestClient) -> None:
    for key in (READER, WRITER, READ_WRITE, DIGEST_ONLY):
        refused = keyed.post("/models/reload", headers={"Authorization": f"Bearer {key}"})
        assert refused.status_code == 403 and "admin" in refused.json()["message"]
    allowed = keyed.post("/models/reload", headers={"Authorization": f"Bearer {ADMIN}"})
    assert allowed.status_code == 200 and allowed.json()["changed"] is False
    admin_posts = [e for e in _protected(keyed) if expected_scope(e) == "admin"]
    assert {("POST", "/models/reload")} <= {(e.method, e.path) for e in admin_posts}


def test_public_paths_stay_open(keyed: TestClient) -> None:
    for path in ("/healthz", "/openapi.json", "/docs"):
        assert keyed.get(path).status_code == 200, path
    assert keyed.get("/readyz").status_code == 503  # no model: not ready, but answered


def test_keys_are_held_only_as_digests(keyed: TestClient) -> None:
    held = keyed.app.state.api_keys
    assert [key.digest for key in held] == [hash_key(secret) for secret in ALL_SECRETS]
    for key in held:
        fields = " ".join(repr(getattr(key, name)) for name in key.__slots__)
        assert not any(secret in fields or secret in repr(key) for secret in ALL_SECRETS)
    # The digest-only key works although the service never saw its plaintext.
    ok = keyed.get("/items/m1", headers={"Authorization": f"Bearer {DIGEST_ONLY}"})
    assert ok.status_code == 404  # authenticated (then: no such item)


def test_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = parse_api_keys(KEYS)
    compared: list[tuple[int, int]] = []
    real = security.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", counting)
    for presented in (READER, DIGEST_ONLY, WRONG, "x", "y" * 5000):
        compared.clear()
        matched = security.authenticate(keys, presented)
        assert (matched is not None) == (presented in ALL_SECRETS)
        # Every key is compared, whichever matches (no early exit), and always 32 bytes
        # against 32 bytes, so neither the position nor the length of a key leaks.
        assert compared == [(32, 32)] * len(keys)


def test_keys_never_appear_in_logs(keyed: TestClient, caplog: pytest.LogCaptureFixture,
                                   capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    for key in (*ALL_SECRETS, WRONG):
        for scheme in ("Bearer", "Basic"):
            token = base64.b64encode(f"me:{key}".encode()).decode() if scheme == "Basic" else key
            headers = {"Authorization": f"{scheme} {token}"}
            keyed.get("/items/m1", headers=headers)
            keyed.post("/models/reload", headers=headers)
            keyed.post("/events", headers=headers, content=b"{not json")
    logged = caplog.text + "".join(capfd.readouterr())
    assert "/items/{item_id}" in logged  # the requests were logged ...
    for secret in (*ALL_SECRETS, WRONG):
        assert secret not in logged  # ... the keys were not
        assert base64.b64encode(f"me:{secret}".encode()).decode() not in logged
