"""The data contract has one source: the event columns come from the table definition, the body
names the same fields, derived ids hash a frozen list, and limits are the columns' sizes."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Column, Integer, MetaData, String, Table
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.domain.limits import EVENT_TYPE_MAX_LENGTH, ID_MAX_LENGTH, TITLE_MAX_LENGTH
from app.schemas.events import COLUMN_OF_FIELD, EventIn, EventOut
from app.schemas.items import ItemIn
from app.services.ingestion import DERIVED_ID_V1_FIELDS, derive_event_id, ingest_events
from app.store import repository
from app.store.db import transaction
from app.store.models import EVENT_COLUMNS, EVENTS, Event, Item

RATED = EventIn(user_id="u-1", item_id="i-9", type="rate", value=4.5, text="Gut, très bien",
                timestamp="2024-05-01T14:00:00+02:00", context={"device": "tv", "n": [1, 2]})
VIEWED = EventIn(user_id="u-1", item_id="i-9", type="view", timestamp=1714564800)


def test_derived_ids_are_frozen_v1() -> None:
    # The ids the service has derived since it first did: a change here stores retried events
    # twice (a retry across the deploy gets a new id).
    assert derive_event_id(RATED) == "ev-b5274bd2ac26acf9a301ead5d577e77d49b2ceaf"
    assert derive_event_id(VIEWED) == "ev-7391d7a5110dbd886c4d43503227c6713a680c9f"
    assert DERIVED_ID_V1_FIELDS == ("user_id", "item_id", "type", "value", "text", "timestamp",
                                    "context")


def test_a_new_event_field_does_not_change_derived_ids() -> None:
    class EventWithSource(EventIn):
        source: str = "mobile"
        weight: float = 2.0

    later = EventWithSource(**RATED.model_dump(), source="web")
    assert derive_event_id(later) == derive_event_id(RATED)
    # the hashed fields still tell events apart
    assert derive_event_id(RATED.model_copy(update={"value": 4.0})) != derive_event_id(RATED)
    # and the same instant in another offset is the same event
    same = RATED.model_copy(update={"timestamp": datetime(2024, 5, 1, 12, tzinfo=UTC)})
    assert derive_event_id(same) == derive_event_id(RATED)


def test_the_body_names_every_column_of_the_events_table() -> None:
    body = {COLUMN_OF_FIELD.get(name, name) for name in EventIn.model_fields}
    # all the table's columns but the ones the service sets (seq, ingested_at)
    assert body == set(EVENT_COLUMNS) - {"ingested_at"}
    response = {COLUMN_OF_FIELD.get(name, name) for name in EventOut.model_fields}
    assert response == set(EVENT_COLUMNS)
    assert tuple(c.name for c in EVENTS.columns if c.name != "seq") == EVENT_COLUMNS


def test_the_bulk_insert_is_built_from_the_table() -> None:
    statement = repository._PG_INSERT_EVENTS.text
    for name in EVENT_COLUMNS:
        assert f"CAST(:{name} AS " in statement
    assert ":seq" not in statement
    # a column added to a table joins the statement, typed from its definition
    table = Table("things", MetaData(), Column("seq", Integer, primary_key=True),
                  Column("thing_id", String(ID_MAX_LENGTH), unique=True),
                  Column("source", String(16), default="api"))
    columns = repository.written_columns(table)
    built = repository._pg_bulk_insert(table, columns, conflict="thing_id").text
    assert "CAST(:source AS varchar[])" in built and "seq" not in built
    # a row without a value for a column with a default gets the default
    assert repository._column_values([{"thing_id": "a"}], table.c.source) == ["api"]


def test_stored_events_read_back_as_sent(factory: sessionmaker[Session]) -> None:
    """Every field goes through the bulk insert (PostgreSQL's and SQLite's) and comes back in
    the response model unchanged."""
    with transaction(factory) as session:
        repository.upsert_items(session, [ItemIn(item_id="i-9", title="Nine").model_dump()])
        result = ingest_events(session, [RATED, VIEWED], Settings())
    assert result.accepted == 2
    with factory() as session:
        stored = repository.user_events_page(session, "u-1", limit=10)
        out = [EventOut.model_validate(event) for event in stored]
    assert [e.event_id for e in out] == [derive_event_id(VIEWED), derive_event_id(RATED)]
    sent = RATED.model_dump(exclude={"event_id"})
    assert out[1].model_dump(include=set(sent)) == sent
    assert out[1].ingested_at.tzinfo is not None


def test_limits_are_the_columns_sizes() -> None:
    events = EventIn.model_json_schema()["properties"]
    items = ItemIn.model_json_schema()["properties"]
    for name in ("user_id", "item_id"):
        assert events[name]["maxLength"] == ID_MAX_LENGTH
    assert items["item_id"]["maxLength"] == ID_MAX_LENGTH
    assert items["title"]["maxLength"] == TITLE_MAX_LENGTH
    assert events["type"]["maxLength"] == EVENT_TYPE_MAX_LENGTH
    for column in (Event.event_id, Event.user_id, Item.item_id):
        assert column.type.length == ID_MAX_LENGTH  # type: ignore[attr-defined]
    assert Item.title.type.length == TITLE_MAX_LENGTH  # type: ignore[attr-defined]
    assert Event.type.type.length == EVENT_TYPE_MAX_LENGTH  # type: ignore[attr-defined]
    # not settings (they were documented as such but never read)
    assert not {"max_title_chars", "max_id_chars"} & set(Settings.model_fields)
