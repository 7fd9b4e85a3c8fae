"""driftrec_client against the live app (PostgreSQL, the tiny registered model): every
endpoint it wraps, blocking and async; a 422 surfaced as an exception naming the field (and the
row, counted over the caller's whole input); a batch resent after a lost answer stored once.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.store.db import make_engine, make_session_factory, transaction
from app.store.drift_records import record_drift
from driftrec_client import (
    AsyncDriftRecClient,
    DriftRecClient,
    InvalidRequest,
    NotFound,
    Retry,
    Unavailable,
)
from tests.conftest import TinyModel, tiny_model_database, tiny_users_data
from training.data.importer import import_movielens

NO_WAIT = Retry(attempts=3, backoff=0.0, max_backoff=0.0)


@dataclass
class Live:
    test_client: TestClient
    database_url: str
    user: str  # an imported user with a history the model knows
    items: list[str]  # catalogue items the model was trained on


@pytest.fixture(scope="module")
def live(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("client")
    _, split, subset = tiny_users_data()
    with tiny_model_database(tiny_model, root, "client") as (settings, _):
        engine = make_engine(settings.database_url)
        import_movielens(subset, make_session_factory(engine), settings, progress=False)
        engine.dispose()
        with TestClient(create_app(settings)) as test_client:
            items = sorted({rating.item_id for rating in subset.ratings})[:20]
            user = split.train[0].user_id
            _record_drifts(settings.database_url, user, 5)
            yield Live(test_client, settings.database_url, user, items)


def _record_drifts(database_url: str, user: str, count: int) -> None:
    """`count` drift records of the user, an hour apart (more than one page of history)."""
    engine = make_engine(database_url)
    at = datetime(2024, 2, 1, tzinfo=UTC)
    with transaction(make_session_factory(engine)) as session:
        for i in range(count):
            record_drift(session, user_id=user, change_event_id=f"paged-{i}",
                         change_at=at, change_index=i, score=0.9, threshold=0.5,
                         kind="abrupt", model_version="1", interests_before={"a": 1.0},
                         interests_after={"b": 1.0}, detected_at=at + timedelta(hours=i))
    engine.dispose()


def _events(user: str, items: list[str], prefix: str, start: datetime) -> list[dict[str, object]]:
    return [{"event_id": f"{prefix}-{i}", "user_id": user, "item_id": item, "type": "rate",
             "value": 4.0, "timestamp": start + timedelta(minutes=i)}
            for i, item in enumerate(items)]


def test_importing_the_client_loads_no_server_dependency() -> None:
    heavy = ["torch", "sqlalchemy", "fastapi", "starlette", "numpy", "mlflow", "transformers",
             "prometheus_client", "psycopg", "app.services", "app.store", "app.core", "app.ml"]
    code = ("import sys, driftrec_client; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "[]"


def test_every_endpoint_through_the_blocking_client(live: Live) -> None:
    client = DriftRecClient(http=live.test_client, retry=NO_WAIT)
    assert client.upsert_items([{"item_id": "client-item", "title": "A client's item",
                                 "categories": ["Drama"]}]) == 1

    start = datetime(2024, 1, 1, tzinfo=UTC)
    events = _events("client-user", live.items[:12], "client-ev", start)
    summary = client.ingest_events(events, batch_size=5)
    assert (summary.accepted, summary.duplicates, summary.batches) == (12, 0, 3)
    again = client.ingest_events(events, batch_size=5)  # a replay: deduplicated by event_id
    assert (again.accepted, again.duplicates) == (0, 12)

    profile = client.interest_profile("client-user")
    assert profile.user_id == "client-user" and profile.event_count == 12
    assert sum(weight.weight for weight in profile.long_term) == pytest.approx(1.0)

    drift = client.drift(live.user)
    assert drift.user_id == live.user and drift.kind in ("abrupt", "gradual", "none")

    top = client.recommend(live.user, k=5)
    assert top.user_id == live.user and len(top.items) == 5
    session = client.recommend_for_items(live.items[:5], k=4)
    assert session.user_id is None and len(session.items) == 4
    assert not set(live.items[:5]) & {item.item_id for item in session.items}

    similar = client.similar_items(live.items[0], k=3)
    assert similar.item_id == live.items[0] and len(similar.items) == 3

    erased = client.erase_user("client-user")
    assert erased.user_id == "client-user" and erased.events_removed == 12
    with pytest.raises(NotFound) as missing:
        client.erase_user("client-user")
    assert missing.value.status == 404 and missing.value.code


def test_drift_history_follows_next_cursor(live: Live) -> None:
    client = DriftRecClient(http=live.test_client, retry=NO_WAIT)
    pages: list[httpx.Request] = []
    live.test_client.event_hooks["request"].append(pages.append)
    try:
        records = list(client.drift_history(user_id=live.user, kind="abrupt", page_size=2))
    finally:
        live.test_client.event_hooks["request"].remove(pages.append)
    paged = [r for r in records if r.change_event_id.startswith("paged-")]
    assert [r.change_event_id for r in paged] == [f"paged-{i}" for i in range(4, -1, -1)]
    assert len(pages) >= 3 and "cursor" in str(pages[-1].url)
    first = client.drift_history_page(user_id=live.user, limit=2)
    assert len(first.records) == 2 and first.next_cursor


def test_a_refused_row_is_an_exception_naming_field_and_row(live: Live) -> None:
    client = DriftRecClient(http=live.test_client, retry=NO_WAIT)
    events = _events("refused-user", live.items[:6], "refused", datetime(2024, 1, 1, tzinfo=UTC))
    events[4]["timestamp"] = "not a time"  # row 4: the second batch's row 1
    with pytest.raises(InvalidRequest) as refused:
        client.ingest_events(events, batch_size=3)
    error = refused.value
    assert error.status == 422 and error.code == "validation_error"
    assert error.fields == ["timestamp"] and error.problems[0].row == 4
    assert "timestamp" in error.message
    # the first batch was stored, nothing of the refused one
    stored = client.interest_profile("refused-user")
    assert stored.event_count == 3

    with pytest.raises(InvalidRequest) as too_many:
        client.recommend(live.user, k=10_000)
    assert too_many.value.fields == ["k"]


class _LosesFirstAnswer(httpx.BaseTransport):
    """Delivers every request, but the answer to the first POST /events never arrives."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.lost = 0
        self.sent = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.inner.handle_request(request)
        content = answer.read()  # the service has answered: the events are committed
        if request.method == "POST" and request.url.path == "/events":
            self.sent += 1
            if self.lost == 0:
                self.lost += 1
                raise httpx.ReadTimeout("answer lost", request=request)
        return httpx.Response(answer.status_code, headers=answer.headers, content=content)


def test_a_batch_resent_after_a_lost_answer_is_stored_once(live: Live) -> None:
    transport = _LosesFirstAnswer(live.test_client._transport)
    client = DriftRecClient(transport=transport, retry=NO_WAIT)
    events = _events("resent-user", live.items[:4], "resent", datetime(2024, 1, 1, tzinfo=UTC))
    summary = client.ingest_events(events)
    assert transport.sent == 2 and transport.lost == 1
    # the first try committed: the resend finds every event stored already
    assert (summary.accepted, summary.duplicates) == (0, 4)
    assert client.interest_profile("resent-user").event_count == 4


def test_retries_follow_the_rule() -> None:
    tries: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        tries.append(request.url.path)
        if len(tries) < 3:
            return httpx.Response(503, json={"error": "database_unavailable", "message": "x"},
                                  headers={"Retry-After": "0"})
        return httpx.Response(200, json={"upserted": 1})

    client = DriftRecClient(transport=httpx.MockTransport(handler), retry=NO_WAIT)
    assert client.upsert_items([{"item_id": "i", "title": "t"}]) == 1 and len(tries) == 3

    tries.clear()

    def always_down(request: httpx.Request) -> httpx.Response:
        tries.append(request.url.path)
        return httpx.Response(503, json={"error": "model_unavailable", "message": "no model"})

    client = DriftRecClient(transport=httpx.MockTransport(always_down), retry=NO_WAIT)
    with pytest.raises(Unavailable) as down:
        client.drift("u1")
    assert len(tries) == 3 and down.value.code == "model_unavailable"

    tries.clear()

    def lost(request: httpx.Request) -> httpx.Response:
        tries.append(request.url.path)
        raise httpx.ReadTimeout("lost", request=request)

    # a recommendation records an impression: not resent once it may have arrived
    client = DriftRecClient(transport=httpx.MockTransport(lost), retry=NO_WAIT)
    with pytest.raises(Exception, match="no answer"):
        client.recommend("u1")
    assert tries == ["/recommend/u1"]


def test_every_endpoint_through_the_async_client(live: Live) -> None:
    transport = httpx.ASGITransport(app=live.test_client.app)
    start = datetime(2024, 3, 1, tzinfo=UTC)

    async def scenario() -> None:
        async with AsyncDriftRecClient(transport=transport, retry=NO_WAIT,
                                       batch_size=4) as client:
            assert await client.upsert_items([{"item_id": "async-item", "title": "Async"}]) == 1
            summary = await client.ingest_events(
                _events("async-user", live.items[:10], "async-ev", start))
            assert (summary.accepted, summary.batches) == (10, 3)
            assert (await client.interest_profile("async-user")).event_count == 10
            assert (await client.drift(live.user)).user_id == live.user
            assert len((await client.recommend(live.user, k=3)).items) == 3
            assert len((await client.recommend_for_items(live.items[:3], k=2)).items) == 2
            assert len((await client.similar_items(live.items[1], k=2)).items) == 2
            records = [r async for r in client.drift_history(user_id=live.user, page_size=2)]
            assert len(records) >= 5
            with pytest.raises(InvalidRequest) as refused:
                await client.similar_items(live.items[1], k=10_000)
            assert refused.value.fields == ["k"]
            assert (await client.erase_user("async-user")).events_removed == 10

    asyncio.run(scenario())
