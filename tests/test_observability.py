"""Operability: request ids, JSON logs without credentials, Prometheus metrics at /metrics.

The API-level tests run on SQLite and PostgreSQL (the `client` / `settings` fixtures); tests of
the middleware alone (413, 500) run on SQLite; the model metrics use the tiny registered model.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.core.config import PROJECT_ROOT, Settings
from app.core.logging import (
    REDACTED,
    JsonFormatter,
    Redactor,
    TextFormatter,
    configure_logging,
    request_id_var,
)
from app.core.metrics import Metrics
from app.main import create_app
from app.store.db import transaction
from app.store.drift_records import record_drift
from app.store.migrate import upgrade_head
from tests.conftest import TinyModel

READ_KEY = "obs-read-key-6f1d2c9a"
WRITE_KEY = "obs-write-key-88a0b1"
# Configured by digest only: the service never sees this plaintext unless a caller sends it.
DIGEST_KEY = "obs-digest-key-41e7c0"
HEX_ID = re.compile(r"[0-9a-f]{32}")


# ----------------------------------------------------------------------------- helpers
def metric(client: TestClient, sample_name: str, /, headers: dict[str, str] | None = None,
           **labels: str) -> float | None:
    """The value of the sample whose labels are exactly `labels` (None: absent)."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == sample_name and sample.labels == labels:
                return sample.value
    return None


def log_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    """Every captured line, parsed: a line that is not one JSON object fails the test."""
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def access_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [line for line in log_lines(buffer) if line["logger"] == "driftrec.access"]


def post_catalogue_and_events(client: TestClient, user: str, count: int,
                              headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    items = [{"item_id": f"obs-{i}", "title": f"Item {i}"} for i in range(count)]
    assert client.post("/items", json={"items": items}, headers=headers).status_code == 200
    start = time.time() - 3_600
    return [{"event_id": f"{user}-e{i}", "user_id": user, "item_id": f"obs-{i}", "type": "view",
             "timestamp": start + 60 * i} for i in range(count)]


@pytest.fixture
def log_output(client: TestClient, settings: Settings) -> Iterator[io.StringIO]:
    """The service's log output from here on (after the app configured its own handler)."""
    buffer = io.StringIO()
    configure_logging(settings, buffer)
    yield buffer
    configure_logging(settings)


@pytest.fixture
def sqlite_settings(tmp_path: Path, empty_registry: str) -> Settings:
    url = f"sqlite:///{tmp_path / 'observability.db'}"
    upgrade_head(url)
    return Settings(database_url=url, mlflow_tracking_uri=empty_registry,
                    mlflow_artifact_root=str(tmp_path / "artifacts"), model_poll_seconds=0,
                    max_body_bytes=1024)


# ----------------------------------------------------------------------------- request id
def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    given = client.get("/healthz", headers={"X-Request-ID": "req-42.a:b_c"})
    assert given.headers["X-Request-ID"] == "req-42.a:b_c"
    generated = [client.get("/healthz").headers["X-Request-ID"] for _ in range(2)]
    assert all(HEX_ID.fullmatch(r) for r in generated) and generated[0] != generated[1]
    # Unsafe ids (header injection, log forging, unbounded length) are replaced, not echoed.
    for unsafe in ("a b", "x" * 129, "id;drop", "\u00e9t\u00e9".encode("latin-1")):
        echoed = client.get("/healthz", headers={"X-Request-ID": unsafe}).headers["X-Request-ID"]
        assert HEX_ID.fullmatch(echoed), unsafe
    assert client.get("/healthz", headers={"X-Request-ID": "y" * 128}).headers[
        "X-Request-ID"] == "y" * 128
    # ... also on error responses
    not_found = client.get("/no/such/path", headers={"X-Request-ID": "nf-1"})
    assert not_found.status_code == 404 and not_found.headers["X-Request-ID"] == "nf-1"
    invalid = client.post("/events", json={"events": [{"user_id": "u"}]},
                          headers={"X-Request-ID": "bad-1"})
    assert invalid.status_code == 422 and invalid.headers["X-Request-ID"] == "bad-1"


def test_request_id_on_413_and_500(sqlite_settings: Settings) -> None:
    app = create_app(sqlite_settings)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("kaboom")

    with TestClient(app, raise_server_exceptions=False) as client:
        buffer = io.StringIO()
        configure_logging(sqlite_settings, buffer)
        too_big = client.post("/events", content=b"x" * 5_000,
                              headers={"X-Request-ID": "big-1",
                                       "content-type": "application/json"})
        assert too_big.status_code == 413 and too_big.headers["X-Request-ID"] == "big-1"
        assert too_big.json()["error"] == "payload_too_large"
        failed = client.get("/boom", headers={"X-Request-ID": "err-1"})
        assert failed.status_code == 500 and failed.headers["X-Request-ID"] == "err-1"
        assert failed.json()["error"] == "internal_error" and "kaboom" not in failed.text
        lines = log_lines(buffer)
        # The traceback is logged with the request id it belongs to.
        [error] = [line for line in lines if line["level"] == "ERROR"]
        assert error["request_id"] == "err-1" and "RuntimeError: kaboom" in error["exception"]
        statuses = {(line["route"], line["status"], line["request_id"])
                    for line in access_lines(buffer)}
        assert {("/events", 413, "big-1"), ("/boom", 500, "err-1")} <= statuses
        assert metric(client, "driftrec_http_requests_total", method="POST", route="/events",
                      status="413") == 1
        assert metric(client, "driftrec_http_requests_total", method="GET", route="/boom",
                      status="500") == 1
    configure_logging(sqlite_settings)


# ----------------------------------------------------------------------------- logs
def test_access_log_is_json_with_request_id_and_route_template(
        client: TestClient, log_output: io.StringIO) -> None:
    response = client.get("/users/someone-7/events", params={"limit": 5},
                          headers={"X-Request-ID": "trace-1"})
    assert response.status_code == 404
    # A line logged by service code inside the request carries its id too (the reload runs
    # in a worker thread; it fails: no model is registered).
    client.post("/models/reload", headers={"X-Request-ID": "trace-2"})
    lines = log_lines(log_output)
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert all(datetime.fromisoformat(line["time"]).tzinfo is not None for line in lines)
    [access] = [line for line in access_lines(log_output) if line["request_id"] == "trace-1"]
    assert access["route"] == "/users/{user_id}/events" and access["method"] == "GET"
    assert access["status"] == 404 and access["duration_ms"] >= 0
    assert access["level"] == "INFO"
    # Neither the raw path (a user id) nor the query string is logged.
    assert "someone-7" not in json.dumps(access) and "limit" not in json.dumps(access)
    reload_failed = [line for line in lines if line["logger"] == "driftrec.models"]
    assert reload_failed and all(line["request_id"] == "trace-2" for line in reload_failed)
    # Lines outside any request have no request id.
    logging.getLogger("driftrec.test").info("outside")
    assert "request_id" not in log_lines(log_output)[-1]


def test_api_keys_and_authorization_never_reach_the_logs(settings: Settings) -> None:
    digest = hashlib.sha256(DIGEST_KEY.encode()).hexdigest()
    keyed = settings.model_copy(update={
        "api_keys": f"{READ_KEY}:read;{WRITE_KEY}:write;sha256={digest}:admin"})
    with TestClient(create_app(keyed)) as client:
        buffer = io.StringIO()
        configure_logging(keyed, buffer)
        wrong = "Bearer not-a-key-3c1f9e77"
        assert client.get("/drift/history", headers={"Authorization": wrong}).status_code == 401
        assert client.get("/drift/history", headers={
            "Authorization": f"Bearer {WRITE_KEY}"}).status_code == 403
        assert client.get("/drift/history", params={"api_key": READ_KEY}, headers={
            "Authorization": f"Bearer {READ_KEY}"}).status_code == 200
        assert client.post("/models/reload", headers={
            "Authorization": f"Bearer {DIGEST_KEY}"}).status_code == 200
        # Careless code that logs a key, a header or a settings dump is scrubbed too.
        careless = logging.getLogger("driftrec.careless")
        careless.warning("key %s header Authorization: %s", READ_KEY, wrong)
        careless.warning("admin presented %s", DIGEST_KEY, extra={"token": WRITE_KEY})
        careless.warning("settings: DRIFTREC_API_KEYS=%s", keyed.api_keys)
        try:
            raise ValueError(f"bad key {WRITE_KEY}")
        except ValueError:
            careless.exception("while checking")
        output = buffer.getvalue()
        log_lines(buffer)  # still one JSON object per line
        for secret in (READ_KEY, WRITE_KEY, DIGEST_KEY, "not-a-key-3c1f9e77", digest):
            assert secret not in output, secret
        assert output.count(REDACTED) >= 6
        assert len(access_lines(buffer)) == 4
    configure_logging(keyed)


def test_formatters_json_extras_and_text() -> None:
    redactor = Redactor([READ_KEY])
    record = logging.LogRecord("driftrec.x", logging.INFO, __file__, 1, "hello %s", ("you",),
                               None)
    record.batch = 3
    record.message_count = {"nested": True}
    token = request_id_var.set("rid-9")
    try:
        line = json.loads(JsonFormatter(redactor).format(record))
        text = TextFormatter(redactor).format(record)
    finally:
        request_id_var.reset(token)
    assert line["message"] == "hello you" and line["request_id"] == "rid-9"
    assert line["batch"] == 3 and line["message_count"] == {"nested": True}
    assert line["level"] == "INFO" and line["logger"] == "driftrec.x"
    assert "INFO driftrec.x [rid-9] hello you" in text and "batch=3" in text
    # An extra named like a core field does not overwrite it.
    clash = logging.LogRecord("a", logging.INFO, __file__, 1, f"m {READ_KEY}", (), None)
    clash.level = "fake"
    parsed = json.loads(JsonFormatter(redactor).format(clash))
    assert parsed["level"] == "INFO" and parsed["message"] == f"m {REDACTED}"
    assert READ_KEY not in TextFormatter(redactor).format(clash)


def test_uvicorn_log_config_writes_json_and_drops_uvicorn_access_lines(tmp_path: Path) -> None:
    """What `python -m app serve` hands uvicorn, applied as uvicorn applies it in a worker."""
    script = (
        "import logging, logging.config\n"
        "from app.core.config import get_settings\n"
        "from app.core.logging import uvicorn_log_config\n"
        "logging.config.dictConfig(uvicorn_log_config(get_settings()))\n"
        "logging.getLogger('uvicorn.error').info('Started server process [%d]', 7,"
        " extra={'color_message': 'coloured'})\n"
        "logging.getLogger('uvicorn.access').info('GET /secret?api_key=x 200')\n"
        f"logging.getLogger('driftrec').warning('presented {READ_KEY}')\n"
    )
    env = {**os.environ, "DRIFTREC_API_KEYS": f"{READ_KEY}:read", "DRIFTREC_LOG_LEVEL": "INFO",
           "DRIFTREC_LOG_FORMAT": "json"}
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, env=env,
                            capture_output=True, text=True, timeout=120, check=True)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(line["logger"], line["message"]) for line in lines] == [
        ("uvicorn.error", "Started server process [7]"),
        ("driftrec", f"presented {REDACTED}")]
    assert "color_message" not in lines[0]


# ----------------------------------------------------------------------------- metrics
def test_metrics_count_ingested_and_duplicate_events(client: TestClient) -> None:
    events = post_catalogue_and_events(client, "counted", 4)
    assert metric(client, "driftrec_events_ingested_total") == 0
    assert client.post("/events", json={"events": events[:3]}).json()["accepted"] == 3
    # A retry of the batch with one new event: 1 new, 3 duplicates.
    body = client.post("/events", json={"events": events}).json()
    assert body == {"accepted": 1, "duplicates": 3}
    # A rejected batch stores nothing and counts nothing.
    bad = {**events[0], "event_id": "new-but-bad", "item_id": "no-such-item"}
    assert client.post("/events", json={"events": [bad]}).status_code == 422
    assert metric(client, "driftrec_events_ingested_total") == 4
    assert metric(client, "driftrec_events_duplicate_total") == 3


def test_metrics_label_requests_by_route_template(client: TestClient) -> None:
    for user in ("alice", "bob", "carol"):
        client.get(f"/recommend/{user}", params={"k": 3})
    client.get("/definitely/not/here")
    client.get("/definitely/not/here/either")
    text = client.get("/metrics").text
    assert "alice" not in text and "/definitely" not in text
    # No model is served here: 503, counted under the template, once per request.
    assert metric(client, "driftrec_http_requests_total", method="GET",
                  route="/recommend/{user_id}", status="503") == 3
    assert metric(client, "driftrec_http_requests_total", method="GET", route="unmatched",
                  status="404") == 2
    assert metric(client, "driftrec_http_request_duration_seconds_count", method="GET",
                  route="/recommend/{user_id}") == 3
    assert metric(client, "driftrec_http_request_duration_seconds_bucket", method="GET",
                  route="/recommend/{user_id}", le="10.0") == 3
    families = {f.name: f for f in text_string_to_metric_families(text)}
    buckets = sorted({float(s.labels["le"]) for s in
                      families["driftrec_http_request_duration_seconds"].samples
                      if s.name.endswith("_bucket")})
    assert buckets[0] == 0.001 and buckets[-2] == 10.0
    content_type = client.get("/metrics").headers["content-type"]
    assert content_type.startswith("text/plain") and "version=0.0.4" in content_type


def test_metrics_without_a_model(client: TestClient) -> None:
    # Start-up tried to load the champion and failed (the registry is empty).
    assert metric(client, "driftrec_model_reload_failures_total") == 1
    text = client.get("/metrics").text
    assert "driftrec_model_info{" not in text
    client.post("/models/reload")
    assert metric(client, "driftrec_model_reload_failures_total") == 2


def test_drifts_are_counted_when_their_record_commits(client: TestClient) -> None:
    events = post_catalogue_and_events(client, "drifting", 3)
    assert client.post("/events", json={"events": events}).status_code == 200
    factory = client.app.state.runtime.session_factory
    change = {"user_id": "drifting", "change_event_id": events[2]["event_id"],
              "change_at": datetime.fromtimestamp(events[2]["timestamp"], UTC),
              "change_index": 2, "score": 0.9, "threshold": 0.5, "kind": "abrupt",
              "model_version": "1", "interests_before": {"a": 1.0},
              "interests_after": {"b": 1.0}}
    with pytest.raises(RuntimeError), transaction(factory) as session:
        assert record_drift(session, **change)[1]
        raise RuntimeError("rolled back")
    assert metric(client, "driftrec_drifts_detected_total") == 0
    with transaction(factory) as session:
        assert record_drift(session, **change)[1]
    assert metric(client, "driftrec_drifts_detected_total") == 1
    with transaction(factory) as session:  # the same change point again: not a new drift
        assert not record_drift(session, **change)[1]
    assert metric(client, "driftrec_drifts_detected_total") == 1


def test_metrics_need_the_read_scope_when_keys_are_configured(settings: Settings) -> None:
    keyed = settings.model_copy(update={"api_keys": f"{READ_KEY}:read;{WRITE_KEY}:write"})
    with TestClient(create_app(keyed)) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={
            "Authorization": f"Bearer {WRITE_KEY}"}).status_code == 403
        assert metric(client, "driftrec_http_requests_total",
                      headers={"Authorization": f"Bearer {READ_KEY}"},
                      method="GET", route="/metrics", status="401") == 1
    configure_logging(keyed)


def test_model_info_follows_the_served_version() -> None:
    metrics = Metrics()
    manager = SimpleNamespace(loaded=None, reload_failures=0)

    def info() -> list[dict[str, str]]:
        families = text_string_to_metric_families(metrics.exposition()[0].decode())
        return [s.labels for f in families for s in f.samples
                if s.name == "driftrec_model_info" and s.value == 1]

    metrics.observe_model(manager)
    assert info() == []
    manager.loaded = SimpleNamespace(name="interest-model", version="3", device="cpu")
    metrics.observe_model(manager)
    manager.loaded = SimpleNamespace(name="interest-model", version="4", device="cuda:0")
    manager.reload_failures = 2
    metrics.observe_model(manager)
    metrics.observe_model(manager)  # observing again changes nothing
    assert info() == [{"name": "interest-model", "version": "4", "device": "cuda:0"}]
    assert "version=\"3\"" not in metrics.exposition()[0].decode()
    assert metrics.reload_failures._value.get() == 2


def test_multiprocess_mode_sums_counters_over_worker_processes(tmp_path: Path) -> None:
    """Two "workers" (processes) write to PROMETHEUS_MULTIPROC_DIR; a third scrapes."""
    directory = tmp_path / "prometheus"
    directory.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    worker = (
        "import sys\n"
        "from types import SimpleNamespace\n"
        "from app.core.metrics import new_metrics\n"
        "metrics = new_metrics()\n"
        "assert metrics is new_metrics()  # one set of metric objects per process\n"
        "for _ in range(int(sys.argv[1])):\n"
        "    metrics.observe_request('GET', '/healthz', 200, 0.002)\n"
        "metrics.count_events(3, 1)\n"
        "model = SimpleNamespace(name='interest-model', version=sys.argv[2], device='cpu')\n"
        "metrics.observe_model(SimpleNamespace(loaded=model, reload_failures=1))\n"
        "if sys.argv[3] == 'exit':\n"
        "    metrics.process_exiting()\n"
        "print(metrics.exposition()[0].decode())\n"
    )
    run = [sys.executable, "-c", worker]
    subprocess.run([*run, "2", "1", "exit"], cwd=PROJECT_ROOT, env=env, check=True,
                   capture_output=True, timeout=120)
    scrape = subprocess.run([*run, "3", "2", "stay"], cwd=PROJECT_ROOT, env=env, check=True,
                            capture_output=True, text=True, timeout=120).stdout
    samples = {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "pid"))):
               s.value for f in text_string_to_metric_families(scrape) for s in f.samples}
    route = (("method", "GET"), ("route", "/healthz"), ("status", "200"))
    assert samples[("driftrec_http_requests_total", route)] == 5
    assert samples[("driftrec_events_ingested_total", ())] == 6
    assert samples[("driftrec_events_duplicate_total", ())] == 2
    assert samples[("driftrec_model_reload_failures_total", ())] == 2
    # The worker that exited took its model series with it; the live one shows its version.
    info = [s for f in text_string_to_metric_families(scrape) for s in f.samples
            if s.name == "driftrec_model_info"]
    assert [(s.labels["version"], s.value) for s in info] == [("2", 1.0)]
    assert "pid" in info[0].labels


# ----------------------------------------------------------------------------- with a model
@pytest.fixture(scope="module")
def served_tiny(tiny_model: TinyModel,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("observability-model")
    url = f"sqlite:///{root / 'store.db'}"
    upgrade_head(url)
    settings = Settings(database_url=url, mlflow_tracking_uri=tiny_model.target.tracking_uri,
                        mlflow_artifact_root=str(root / "artifacts"), model_poll_seconds=0)
    with TestClient(create_app(settings)) as client:
        yield client
    configure_logging(settings)


def test_model_and_drift_metrics_with_a_served_model(served_tiny: TestClient) -> None:
    client = served_tiny
    served = client.app.state.runtime.models.current
    assert metric(client, "driftrec_model_info", name=served.name, version=served.version,
                  device=served.device) == 1
    assert served.version == "1" and metric(client, "driftrec_model_reload_failures_total") == 0
    item_ids = served.bundle.item_ids[:15]
    items = [{"item_id": item, "title": f"Known {item}"} for item in item_ids]
    assert client.post("/items", json={"items": items}).status_code == 200
    start = time.time() - 86_400
    for user in ("shifter", "queued"):
        events = [{"event_id": f"{user}-{i}", "user_id": user, "item_id": item, "type": "rate",
                   "value": 4.0, "timestamp": start + 600 * i}
                  for i, item in enumerate(item_ids)]
        assert client.post("/events", json={"events": events}).json()["accepted"] == 15
    drift = served.bundle.drift
    calibrated, drift.threshold = drift.threshold, 0.0  # every event alarms
    try:
        first = client.get("/drift/shifter").json()
        assert first["drift_detected"] and first["record_id"] is not None
        assert metric(client, "driftrec_drifts_detected_total") == 1
        again = client.get("/drift/shifter").json()
        assert again["record_id"] == first["record_id"]
        assert metric(client, "driftrec_drifts_detected_total") == 1
        # A check run by the background queue is counted as well.
        late = {"event_id": "queued-late", "user_id": "queued", "item_id": item_ids[0],
                "type": "view", "timestamp": start + 600 * 20}
        assert client.post("/events", params={"detect_drift": "true"},
                           json={"events": [late]}).json()["drift_checks_queued"] == 1
        client.app.state.runtime.drift_queue.join()
        assert metric(client, "driftrec_drifts_detected_total") == 2
    finally:
        drift.threshold = calibrated
    assert client.get("/recommend/shifter", params={"k": 5}).status_code == 200
    assert metric(client, "driftrec_http_requests_total", method="GET",
                  route="/recommend/{user_id}", status="200") == 1
    # A forced reload of the same version keeps exactly one model series.
    assert client.post("/models/reload", params={"force": "true"}).status_code == 200
    text = client.get("/metrics").text
    assert text.count("driftrec_model_info{") == 1
