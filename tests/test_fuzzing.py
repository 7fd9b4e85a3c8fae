"""Fuzzing the service's own OpenAPI schema with schemathesis (issue 6, item 4).

Every operation the schema lists gets a bounded number of generated requests, valid ones
(positive) and invalid ones (negative), against the app on PostgreSQL with a little data and
the tiny model loaded, so the model endpoints run for real. No answer may be a 5xx, and every
answer must be documented: its status code, content type and body schema. Generation is
derandomized (a fixed seed per test), so CI sees the same requests on every run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.python import asgi
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.core.config import Settings
from app.main import create_app
from app.schemas.common import MAX_EPOCH_SECONDS
from tests.app_routes import endpoints
from tests.conftest import TinyModel, tiny_model_database

POSITIVE_EXAMPLES = 15
NEGATIVE_EXAMPLES = 10
ITEMS = [str(i) for i in range(1, 21)]  # MovieLens ids: in the tiny model's catalogue
USERS = ["fz1", "fz2"]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
# Known ids as path parameters: random ones mostly reach the 404 branch only.
KNOWN_PATH_PARAMETERS = {"user_id": USERS[0], "item_id": ITEMS[0]}
# Statuses seen, by (operation, mode): shows the fuzzing reached the handlers.
STATUSES: dict[tuple[str, str], list[int]] = {}
# Operations that must have answered 2xx to generated valid requests (with the known ids):
# the model-backed ones ran inference, not just validation.
MUST_SUCCEED = ("GET /users/{user_id}/events", "GET /recommend/{user_id}",
                "GET /interest-profile/{user_id}", "GET /drift/{user_id}", "POST /items",
                "GET /drift/summary", "GET /items", "GET /items/{item_id}/similar",
                "PATCH /items/{item_id}", "DELETE /users/{user_id}",
                "GET /models/online-metrics")


@dataclass
class Fuzzed:
    schema: Any
    settings: Settings


@pytest.fixture(scope="module")
def fuzzed(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Fuzzed]:
    root = tmp_path_factory.mktemp("fuzzing")
    with tiny_model_database(tiny_model, root, "fuzzing") as (settings, _):
        with TestClient(create_app(settings)) as seeder:
            seed_fuzz_data(seeder)
        # Schemathesis runs the app's lifespan itself (once per app); it is stopped below.
        app = create_app(settings)
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        # Auth is off here (tests/test_auth.py covers it): no generated Authorization headers,
        # whose invalid forms an open server rightly accepts.
        schema.config.generation.update(with_security_parameters=False)
        try:
            yield Fuzzed(schema, settings)
        finally:
            asgi.shutdown_lifespans()


def seed_fuzz_data(client: TestClient, users: list[str] = USERS) -> None:
    """The catalogue's first items and 25 events of each of `users` (the bench's run too)."""
    items = [{"item_id": item, "title": f"Movie {item}", "categories": ["Drama"]}
             for item in ITEMS]
    assert client.post("/items", json={"items": items}).status_code == 200
    events = [{"event_id": f"{user}-{n}", "user_id": user, "item_id": ITEMS[(n * 7) % 20],
               "type": "view", "timestamp": 1_700_000_000 + 3600 * n}
              for user in users for n in range(25)]
    assert client.post("/events", json={"events": events}).status_code == 200


def _operations(schema: Any) -> list[APIOperation]:
    """Every operation, the destructive ones (erasing the known user, deleting or retiring
    the known item) last, so the others still find the seeded data."""
    operations = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    return sorted(operations, key=lambda op: op.method.upper() in ("DELETE", "PATCH"))


def _fuzz(operation: APIOperation, mode: GenerationMode, examples: int,
          checks: list[Callable[..., Any]], path_parameters: dict[str, str] | None
          ) -> list[str]:
    """Run `examples` generated cases; the failures, described (none is raised here, so one
    run reports every operation's problems at once)."""
    failures: list[str] = []
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

    @hypothesis.settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                         phases=[Phase.explicit, Phase.generate],
                         suppress_health_check=list(HealthCheck))
    @hypothesis.given(strategy)
    def run(case: Any) -> None:
        response = case.call()
        STATUSES.setdefault((operation.label, mode.value), []).append(response.status_code)
        try:
            case.validate_response(response, checks=checks)
        except FailureGroup as group:
            failures.append(f"{operation.label} [{mode.value}]: {group}")

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        # Nothing about the operation can be made invalid (no parameters, no body).
        assert mode is GenerationMode.NEGATIVE, operation.label
    return failures


def _run_all(fuzzed: Fuzzed, mode: GenerationMode, examples: int,
             checks: list[Callable[..., Any]]) -> None:
    operations = _operations(fuzzed.schema)
    failures: list[str] = []
    for operation in operations:
        failures += _fuzz(operation, mode, examples, checks, None)
        path_names = {p.name for p in operation.path_parameters}
        if path_names & set(KNOWN_PATH_PARAMETERS):
            known = {n: v for n, v in KNOWN_PATH_PARAMETERS.items() if n in path_names}
            failures += _fuzz(operation, mode, examples, checks, known)
    assert not failures, f"{len(failures)} failing cases:\n\n" + "\n\n".join(failures[:10])


def test_every_operation_is_in_the_fuzzed_schema(fuzzed: Fuzzed) -> None:
    documented = {(e.method, e.path) for e in endpoints(create_app(fuzzed.settings))
                  if e.in_schema}
    fuzzed_ops = {(op.method.upper(), op.path) for op in _operations(fuzzed.schema)}
    assert documented == fuzzed_ops and len(fuzzed_ops) >= 14


def test_valid_requests_never_fail_and_match_the_schema(fuzzed: Fuzzed) -> None:
    _run_all(fuzzed, GenerationMode.POSITIVE, POSITIVE_EXAMPLES, CHECKS)
    for label in MUST_SUCCEED:
        codes = STATUSES[(label, GenerationMode.POSITIVE.value)]
        assert any(200 <= code < 300 for code in codes), (label, codes)


def test_invalid_requests_are_refused_with_documented_4xx(fuzzed: Fuzzed) -> None:
    _run_all(fuzzed, GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES,
             [*CHECKS, negative_data_rejection])


# ------------------------------------------------------------------ edges of time (issue 12)
def edge_times() -> st.SearchStrategy[str]:
    """Times at the edges of what a datetime holds, as a client would send them: ISO-8601
    in years 1, 1969-70 and 9999 with no offset or any offset up to +-14 h (so some overflow
    on the way to UTC), and epoch seconds around 0, around the last representable second and
    far beyond it."""
    offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
    moments = st.one_of(
        st.datetimes(datetime(1, 1, 1), datetime(1, 1, 2, 23, 59, 59)),
        st.datetimes(datetime(1969, 12, 30), datetime(1970, 1, 2)),
        st.datetimes(datetime(9999, 12, 30), datetime(9999, 12, 31, 23, 59, 59, 999_999)),
    )
    texts = st.builds(lambda moment, tz: moment.replace(tzinfo=tz).isoformat(),
                      moments, st.none() | offsets)
    epochs = st.one_of(
        st.floats(-1e4, 1e4), st.floats(MAX_EPOCH_SECONDS - 1e5, MAX_EPOCH_SECONDS + 1e5),
        st.sampled_from([1e20, -1e20, 1e308, 2.0**63]), st.integers(-(2**70), 2**70))
    return st.one_of(texts, epochs.map(str))


def test_times_at_the_edges_are_answered_or_refused_by_name(fuzzed: Fuzzed) -> None:
    """Every endpoint taking a time answers it or refuses it with a 422 naming the field;
    never a 5xx (an OverflowError is not a ValueError)."""
    with TestClient(create_app(fuzzed.settings), raise_server_exceptions=False) as client:

        @hypothesis.settings(max_examples=60, derandomize=True, database=None, deadline=None,
                             suppress_health_check=list(HealthCheck))
        @hypothesis.given(moment=edge_times())
        def check(moment: str) -> None:
            calls = [
                ("since", lambda: client.get("/drift/history", params={"since": moment})),
                ("until", lambda: client.get("/drift/summary", params={"until": moment})),
                ("before", lambda: client.get(f"/users/{USERS[0]}/events",
                                              params={"before": moment})),
                ("timestamp", lambda: client.post("/events", json={"events": [{
                    "event_id": "edge-1", "user_id": "edge", "item_id": ITEMS[0],
                    "type": "view", "timestamp": moment}]})),
                ("timestamps", lambda: client.post("/recommend", json={
                    "recent_item_ids": [ITEMS[0]], "timestamps": [moment], "k": 3})),
            ]
            for field, call in calls:
                response = call()
                assert response.status_code < 500, (field, moment, response.text)
                if response.status_code == 422:
                    named = {d["field"] for d in response.json()["detail"]}
                    assert field in named, (field, moment, response.json())

        check()
