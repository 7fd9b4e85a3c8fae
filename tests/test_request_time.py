"""`/recommend` with a model whose time bias reads the request time (`at`): validated, passed
through to the same bundle scoring offline evaluation uses, and remembered rankings reused only
while every event's time-gap bucket to the request stays the same.

The served model is the tiny champion with its scorer rebuilt as a "request" time-bias model
(its trained weights, plus strong random bias tables so that the request time matters).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from app.ml.bundle import InterestModelBundle
from app.ml.sequence import SequenceInterestModel
from app.store.db import make_engine, make_session_factory
from tests.conftest import TinyModel, tiny_model_database, tiny_users_data
from training.data.importer import import_movielens

DAY = 86_400.0


def request_time_bundle(bundle: InterestModelBundle) -> InterestModelBundle:
    old = bundle.sequence_model
    config = dataclasses.replace(old.config, time_bias="request", position_bias=True)
    torch.manual_seed(0)
    model = SequenceInterestModel(config, old.n_items, old.text_dim)
    model.set_item_text_embeddings(old.item_text)
    missing, unexpected = model.load_state_dict(old.state_dict(), strict=False)
    assert not unexpected and all(".bias.time" in k or ".bias.position" in k for k in missing)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for block in model.blocks:
            for table in (block.attention.bias.time, block.attention.bias.position):
                table.weight.copy_(3.0 * torch.randn(table.weight.shape, generator=generator))
    return dataclasses.replace(bundle, sequence_model=model.eval())


@dataclasses.dataclass
class Served:
    client: TestClient
    bundle: InterestModelBundle
    users: list[str]


@pytest.fixture(scope="module")
def served(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("request-time")
    _, split, subset = tiny_users_data()
    with tiny_model_database(tiny_model, root, "request_time") as (settings, _):
        engine = make_engine(settings.database_url)
        import_movielens(subset, make_session_factory(engine), settings, progress=False)
        engine.dispose()
        with TestClient(create_app(settings)) as client:
            manager = client.app.state.runtime.models
            current = manager.current
            bundle = request_time_bundle(current.bundle)
            manager.champion.served = current.with_catalogue(  # in place of the champion
                bundle, current.model.catalogue, current.model.availability)
            assert manager.current.bundle.uses_request_time
            yield Served(client, bundle, [seq.user_id for seq in split.train])


def _history(served: Served, user: str) -> tuple[list[str], list[float]]:
    events = served.client.get(f"/users/{user}/events", params={"limit": 1000}).json()
    rows = events["events"][::-1]  # oldest first
    return ([r["item_id"] for r in rows],
            [datetime.fromisoformat(r["timestamp"]).timestamp() for r in rows])


def _scores(body: dict[str, Any]) -> list[tuple[str, float]]:
    return [(item["item_id"], item["score"]) for item in body["items"]]


@pytest.mark.parametrize("value", ["soon", "2024-13-01T00:00:00Z", "-5", "1e400"])
def test_a_bad_request_time_is_a_422_naming_at(served: Served, value: str) -> None:
    user = served.users[0]
    response = served.client.get(f"/recommend/{user}", params={"at": value})
    assert response.status_code == 422, response.text
    assert [d["field"] for d in response.json()["detail"]] == ["at"]
    body = {"recent_item_ids": ["1", "2"], "at": value}
    response = served.client.post("/recommend", json=body)
    assert response.status_code == 422, response.text
    assert "at" in {d["field"] for d in response.json()["detail"]}


def test_served_ranking_at_a_request_time_is_the_bundles(served: Served) -> None:
    """POST /recommend with `at` ranks as the bundle's scoring does at that time (what
    offline evaluation calls with the test event's time), and the time matters."""
    items, times = _history(served, served.users[1])
    answers = []
    for at in (times[-1] + 5.0, times[-1] + 200 * DAY):
        body = {"recent_item_ids": items, "timestamps": times, "k": 10, "at": at,
                "exclude_seen": False, "drift_aware": False}
        response = served.client.post("/recommend", json=body)
        assert response.status_code == 200, response.text
        offline = served.bundle.recommend(items, times, k=10, exclude_history=False, at=at)
        assert [i for i, _ in _scores(response.json())] == [i for i, _ in offline]
        answers.append(_scores(response.json()))
    assert answers[0] != answers[1]


def test_a_remembered_ranking_holds_only_while_the_buckets_hold(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.services.recommender import Recommender

    calls: list[int] = []
    real = Recommender._rank_for_user
    monkeypatch.setattr(Recommender, "_rank_for_user",
                        lambda *args: calls.append(1) or real(*args))
    user = served.users[2]
    items, times = _history(served, user)
    first_at = times[-1] + 3 * DAY
    start, end = served.bundle.request_time_validity(items, times, first_at)
    assert start <= first_at < end < first_at + 3 * DAY  # the next bucket edge comes first

    def get(at: float) -> dict[str, Any]:
        response = served.client.get(f"/recommend/{user}", params={"at": at, "k": 10,
                                                                    "drift_aware": "false"})
        assert response.status_code == 200, response.text
        return response.json()

    first = get(first_at)
    again = get((first_at + end) / 2)
    # same buckets: remembered (a new response, so a recommendation id of its own)
    assert again.pop("recommendation_id") != first.pop("recommendation_id")
    assert again == first and len(calls) == 1
    later = get(end + 1.0)
    assert len(calls) == 2 and _scores(later) != _scores(first)  # a bucket moved: ranked again
    exclude = set(items)
    offline = served.bundle.score_next(items, times, at=end + 1.0)
    ranked = sorted((i for i in range(len(offline)) if served.bundle.item_ids[i] not in exclude),
                    key=lambda i: -offline[i])[:10]
    assert [item["item_id"] for item in later["items"]] == [served.bundle.item_ids[i]
                                                            for i in ranked]


def test_without_a_request_time_it_is_now(served: Served) -> None:
    user = served.users[3]
    items, times = _history(served, user)
    now = datetime.now(UTC).timestamp()
    response = served.client.get(f"/recommend/{user}", params={"drift_aware": "false"})
    assert response.status_code == 200
    expected = served.bundle.recommend(items, times, k=10, exclude_history=True, at=now)
    assert [i["item_id"] for i in response.json()["items"]] == [i for i, _ in expected]
