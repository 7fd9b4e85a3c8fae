"""Health, auth and outage behaviour of the service."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.core.config import Settings
from app.core.security import hash_key, parse_api_keys
from app.main import create_app

KEYS = "reader-key:read;writer-key:write;admin-key:admin"


def test_health_and_not_ready_without_a_model(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"] == "ok"
    assert "interest-model" in ready.json()["checks"]["model"]


def test_model_endpoints_are_503_without_a_model(client: TestClient) -> None:
    for path in ("/recommend/u1", "/drift/u1", "/interest-profile/u1"):
        response = client.get(path)
        assert response.status_code == 503, path
        assert response.json()["error"] == "model_unavailable"
    assert client.get("/models/current").json()["version"] is None


def test_openapi_lists_the_ingestion_api(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/items", "/items/{item_id}", "/events", "/users/{user_id}/events"} <= set(paths)


def test_keys_are_required_and_scoped(settings: Settings) -> None:
    keyed = settings.model_copy(update={"api_keys": KEYS})
    item = {"items": [{"item_id": "m1", "title": "Heat"}]}
    with TestClient(create_app(keyed)) as client:
        assert client.get("/items/m1").status_code == 401
        wrong = client.get("/items/m1", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"] == "unauthorized"
        as_reader = {"Authorization": "Bearer reader-key"}
        forbidden = client.post("/items", json=item, headers=as_reader)
        assert forbidden.status_code == 403 and "write" in forbidden.json()["message"]
        assert client.post("/items", json=item,
                           headers={"Authorization": "Bearer writer-key"}).status_code == 200
        assert client.get("/items/m1", headers=as_reader).status_code == 200
        assert client.get("/items/m1", headers={"Authorization": "Bearer admin-key"}).json()
        assert client.get("/healthz").status_code == 200  # probes stay open


def test_keys_are_kept_as_digests() -> None:
    [plain, hashed] = parse_api_keys(f"secret:read;sha256={hash_key('other').hex()}:write")
    assert plain.digest == hash_key("secret") and b"secret" not in repr(plain).encode()
    assert hashed.digest == hash_key("other") and hashed.scopes == {"write"}


def test_database_outage_is_503_with_retry_hint(tmp_path, empty_registry: str) -> None:
    down = Settings(database_url="postgresql+psycopg://postgres@127.0.0.1:1/none",
                    data_cache_dir=tmp_path, mlflow_tracking_uri=empty_registry,
                    model_poll_seconds=0)
    with TestClient(create_app(down)) as client:
        response = client.post("/events", json={"events": [
            {"user_id": "u1", "item_id": "m1", "type": "view", "timestamp": 1_700_000_000}]})
        assert response.status_code == 503
        assert response.json()["error"] == "database_unavailable"
        assert response.headers["retry-after"]
        assert client.get("/readyz").status_code == 503
        assert client.get("/items/m1").status_code == 503


def test_request_handler_threads_follow_the_setting(settings: Settings) -> None:
    """DRIFTREC_REQUEST_THREADS bounds the threads a worker runs its sync handlers in: the
    event loop's default thread limiter holds that many tokens once the app has started."""
    from anyio import to_thread

    def tokens() -> float:
        return to_thread.current_default_thread_limiter().total_tokens

    for threads in (3, 17):
        with TestClient(create_app(settings.model_copy(update={"request_threads": threads}))
                        ) as client:
            assert client.portal is not None
            assert client.portal.call(tokens) == threads
