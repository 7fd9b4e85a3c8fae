"""Erasure and the item lifecycle over HTTP, on SQLite and PostgreSQL (issue 18, points 1-2).

No model here (the endpoints need none): erasure counts, 404 on repeat, the erasure log line
and both orders of erasure and ingestion; retiring, windows, deletion refused while events
reference an item, and the catalogue listing with its cursor and filters.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.schemas.events import EventIn
from app.services import ingestion
from app.store import drift_records, erasure
from app.store.db import make_engine, make_session_factory, transaction

SUBJECT = "erase-me-7f3a"  # distinctive: must appear in no log line


def _events(user: str, prefix: str, count: int, item: str = "m1") -> list[dict[str, Any]]:
    return [{"event_id": f"{prefix}-{n}", "user_id": user, "item_id": item, "type": "view",
             "timestamp": 1_700_000_000 + 60 * n} for n in range(count)]


def _post(client: TestClient, events: list[dict[str, Any]]) -> None:
    response = client.post("/events", json={"events": events})
    assert response.status_code == 200, response.text


def _drift_rows(settings: Settings, user: str) -> None:
    engine = make_engine(settings.database_url)
    with transaction(make_session_factory(engine)) as session:
        record, _ = drift_records.record_drift(
            session, user_id=user, change_event_id=f"{user}-ev-3",
            change_at=datetime(2023, 11, 14, tzinfo=UTC), change_index=3, score=0.9,
            threshold=0.5, kind="abrupt", model_version="1",
            interests_before={"Drama": 1.0}, interests_after={"Horror": 1.0})
        for detected in (True, False):
            drift_records.record_check(session, user_id=user, model_version="1",
                                       drift_detected=detected,
                                       record_id=record.id if detected else None)
    engine.dispose()


# ------------------------------------------------------------------------- erasure
def test_erasure_removes_everything_of_the_user_and_says_how_much(
        client: TestClient, catalogue: list[str], settings: Settings,
        caplog: pytest.LogCaptureFixture) -> None:
    _post(client, _events(SUBJECT, f"{SUBJECT}-ev", 6))
    _post(client, _events("bystander", "by-ev", 3))
    _drift_rows(settings, SUBJECT)
    with caplog.at_level(logging.INFO):
        response = client.delete(f"/users/{SUBJECT}")
    assert response.status_code == 200, response.text
    assert response.json() == {"user_id": SUBJECT, "events_removed": 6,
                               "drift_records_removed": 1, "drift_checks_removed": 2,
                               "impressions_removed": 0}
    assert client.get(f"/users/{SUBJECT}/events").status_code == 404
    assert client.get("/drift/history", params={"user_id": SUBJECT}).json()["records"] == []
    assert len(client.get("/users/bystander/events").json()["events"]) == 3
    # a retry (or a second call) is a 404 and changes nothing
    again = client.delete(f"/users/{SUBJECT}")
    assert again.status_code == 404 and again.json()["error"] == "not_found"
    # the log says it happened, under a digest; no line names the user
    erased = [r for r in caplog.records if r.getMessage() == "user data erased"]
    assert len(erased) == 1
    digest = erased[0].__dict__["subject_digest"]
    assert len(digest) == 32 and SUBJECT not in digest
    assert erased[0].__dict__["events_removed"] == 6
    # every line the service wrote (the test client's own httpx lines name the URL)
    for record in (r for r in caplog.records if not r.name.startswith("httpx")):
        assert SUBJECT not in record.getMessage()
        assert all(SUBJECT not in str(value) for value in record.__dict__.values()
                   if isinstance(value, str))


def test_the_digest_is_salted_per_deployment(client: TestClient, catalogue: list[str],
                                             settings: Settings,
                                             caplog: pytest.LogCaptureFixture) -> None:
    import hashlib

    _post(client, _events(SUBJECT, "salt-ev", 1))
    with caplog.at_level(logging.INFO):
        assert client.delete(f"/users/{SUBJECT}").status_code == 200
    digest = next(r for r in caplog.records
                  if r.getMessage() == "user data erased").__dict__["subject_digest"]
    assert digest != hashlib.sha256(SUBJECT.encode()).hexdigest()[:32]  # not a bare hash
    engine = make_engine(settings.database_url)
    with make_session_factory(engine)() as session:
        salt = erasure.erasure_salt(session)
    engine.dispose()
    assert len(salt) == 64


def test_an_event_acknowledged_after_the_erasure_stays(client: TestClient,
                                                       catalogue: list[str]) -> None:
    _post(client, _events(SUBJECT, "before", 4))
    assert client.delete(f"/users/{SUBJECT}").json()["events_removed"] == 4
    _post(client, _events(SUBJECT, "after", 2))
    stored = client.get(f"/users/{SUBJECT}/events").json()["events"]
    assert sorted(e["event_id"] for e in stored) == ["after-0", "after-1"]
    # the retried batch of before the erasure is new again: stored anew, as any new event
    assert client.delete(f"/users/{SUBJECT}").json()["events_removed"] == 2


def _ingest(factory: sessionmaker[Session], events: list[dict[str, Any]]) -> None:
    with transaction(factory) as session:
        ingestion.ingest_events(session, [EventIn.model_validate(e) for e in events],
                                Settings())


def _wait_for_lock_wait(factory: sessionmaker[Session], timeout: float = 30.0) -> None:
    """Until some session of this database waits on a lock (PostgreSQL)."""
    deadline = time.monotonic() + timeout
    with factory() as session:
        while time.monotonic() < deadline:
            waiting = session.scalar(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"))
            if waiting:
                return
            # pg_stat_activity is read once per transaction: end it to see the next state
            session.rollback()
            time.sleep(0.02)
    raise AssertionError("nothing waited on a lock")


@pytest.mark.parametrize("first", ["ingestion", "erasure"])
def test_concurrent_erasure_and_ingestion_land_fully_before_or_after(
        factory: sessionmaker[Session], database_url: str, first: str) -> None:
    """One transaction is held open while the other starts: the later one waits for it and
    then acts on what it committed. Ingestion first: its events are erased. Erasure first:
    the batch waits, then re-creates the user, and its events stay."""
    with transaction(factory) as session:
        session.execute(text("INSERT INTO items (item_id, title, categories, attributes, "
                             "created_at, updated_at, active) VALUES ('m1', 'M', '[]', '{}', "
                             "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, true)"))
    _ingest(factory, _events(SUBJECT, "old", 3))
    outcome: dict[str, Any] = {}
    postgres = database_url.startswith("postgresql")
    holder = factory()
    holder.begin()
    try:
        if first == "ingestion":
            ingestion.ingest_events(holder, [EventIn.model_validate(e)
                                             for e in _events(SUBJECT, "mid", 2)], Settings())

            def second() -> None:
                with transaction(factory) as session:
                    outcome["erased"] = erasure.erase_user(session, SUBJECT)
        else:
            outcome["erased"] = erasure.erase_user(holder, SUBJECT)

            def second() -> None:
                _ingest(factory, _events(SUBJECT, "late", 2))

        thread = threading.Thread(target=second)
        thread.start()
        if postgres:
            _wait_for_lock_wait(factory)
        else:
            time.sleep(0.3)  # SQLite: the second writer waits on the database lock
        assert thread.is_alive(), "the second transaction did not wait for the first"
        holder.commit()
    finally:
        holder.close()
    thread.join(timeout=30)
    assert not thread.is_alive()
    with factory() as session:
        left = sorted(session.scalars(text(
            "SELECT event_id FROM events WHERE user_id = :u ORDER BY event_id"),
            {"u": SUBJECT}))
    if first == "ingestion":
        assert outcome["erased"].events == 5 and left == []
    else:
        assert outcome["erased"].events == 3 and left == ["late-0", "late-1"]


# ------------------------------------------------------------------- item lifecycle
def test_retire_and_bring_back(client: TestClient, catalogue: list[str]) -> None:
    retired = client.patch("/items/m2", json={"active": False})
    assert retired.status_code == 200, retired.text
    body = retired.json()
    assert body["active"] is False and body["available_now"] is False
    assert client.patch("/items/m2", json={"active": True}).json()["available_now"] is True
    assert client.patch("/items/nope", json={"active": False}).status_code == 404
    assert client.patch("/items/m2", json={}).status_code == 422
    assert client.patch("/items/m2", json={"active": None}).status_code == 422


def test_availability_window(client: TestClient, catalogue: list[str]) -> None:
    now = datetime.now(UTC)
    later = (now + timedelta(days=1)).isoformat()
    body = client.patch("/items/m3", json={"available_from": later}).json()
    assert body["available_now"] is False and body["active"] is True
    bad = client.patch("/items/m3", json={"available_until": now.isoformat()})
    assert bad.status_code == 422  # would end before it starts
    cleared = client.patch("/items/m3", json={"available_from": None,
                                              "available_until": later}).json()
    assert cleared["available_from"] is None and cleared["available_now"] is True


def test_delete_is_refused_while_events_reference_the_item(client: TestClient,
                                                           catalogue: list[str]) -> None:
    _post(client, _events("u1", "ref", 2, item="m4"))
    refused = client.delete("/items/m4")
    assert refused.status_code == 409 and refused.json()["error"] == "item_in_use"
    retired = client.delete("/items/m4", params={"retire": "true"})
    assert retired.json() == {"item_id": "m4", "deleted": False, "retired": True}
    assert client.get("/items/m4").status_code == 200
    assert len(client.get("/users/u1/events").json()["events"]) == 2  # history kept
    assert client.delete("/items/m5").json() == {"item_id": "m5", "deleted": True,
                                                 "retired": False}
    assert client.get("/items/m5").status_code == 404
    assert client.delete("/items/m5").status_code == 404


def test_catalogue_listing_pages_and_filters(client: TestClient, catalogue: list[str]) -> None:
    extra = [{"item_id": f"x{n:02d}", "title": f"X {n}",
              "categories": ["Horror", "Night"] if n % 2 else ["Comedy"]} for n in range(12)]
    assert client.post("/items", json={"items": extra}).status_code == 200
    client.patch("/items/x01", json={"active": False})
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 5, **({"cursor": cursor} if cursor else {})}
        page = client.get("/items", params=params).json()
        seen += [item["item_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted([*catalogue, *(i["item_id"] for i in extra)])
    horror = client.get("/items", params={"category": "Horror"}).json()["items"]
    assert [i["item_id"] for i in horror] == [f"x{n:02d}" for n in range(12) if n % 2]
    active_horror = client.get("/items", params={"category": "Horror", "active": "true"})
    assert "x01" not in [i["item_id"] for i in active_horror.json()["items"]]
    inactive = client.get("/items", params={"active": "false"}).json()["items"]
    assert [i["item_id"] for i in inactive] == ["x01"]
    assert client.get("/items", params={"cursor": "!!!"}).status_code == 422


@pytest.mark.parametrize("first", ["ingestion", "deletion"])
def test_concurrent_item_deletion_and_ingestion(factory: sessionmaker[Session],
                                                database_url: str, first: str) -> None:
    """Ingestion first: the deletion waits, sees the batch's events and is refused. Deletion
    first: the batch waits and is refused as naming an unknown item (no foreign-key error)."""
    from app.services.ingestion import BatchRejected
    from app.store import catalogue as catalogue_store

    with transaction(factory) as session:
        session.execute(text("INSERT INTO items (item_id, title, categories, attributes, "
                             "created_at, updated_at, active) VALUES ('m1', 'M', '[]', '{}', "
                             "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, true)"))

    def delete(session: Session) -> bool:
        assert catalogue_store.lock_item(session, "m1") is not None
        if catalogue_store.has_events(session, "m1"):
            return False
        catalogue_store.delete_item(session, "m1")
        return True

    outcome: dict[str, Any] = {}
    holder = factory()
    holder.begin()
    try:
        if first == "ingestion":
            ingestion.ingest_events(holder, [EventIn.model_validate(e)
                                             for e in _events("u1", "pin", 1)], Settings())

            def second() -> None:
                with transaction(factory) as session:
                    outcome["deleted"] = delete(session)
        else:
            outcome["deleted"] = delete(holder)

            def second() -> None:
                try:
                    _ingest(factory, _events("u1", "pin", 1))
                    outcome["ingested"] = True
                except BatchRejected as error:
                    outcome["ingested"] = [e.code for e in error.errors]

        thread = threading.Thread(target=second)
        thread.start()
        if database_url.startswith("postgresql"):
            _wait_for_lock_wait(factory)
        else:
            time.sleep(0.3)
        assert thread.is_alive(), "the second transaction did not wait for the first"
        holder.commit()
    finally:
        holder.close()
    thread.join(timeout=30)
    if first == "ingestion":
        assert outcome["deleted"] is False
    else:
        assert outcome["deleted"] is True and outcome["ingested"] == ["unknown_item"]
