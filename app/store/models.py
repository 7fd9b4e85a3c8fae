"""ORM models: the schema the Alembic migrations create (a test checks the two agree)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.domain.limits import EVENT_TYPE_MAX_LENGTH, ID_MAX_LENGTH, TITLE_MAX_LENGTH

# Named constraints so migrations can alter and drop them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned timezone-aware.

    SQLite has no time zones: without this, values read back would be naive there and
    aware on PostgreSQL, and comparisons would differ between the two backends.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: DriftRec stores only timezone-aware times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Item(Base):
    __tablename__ = "items"

    item_id: Mapped[str] = mapped_column(String(ID_MAX_LENGTH), primary_key=True)
    title: Mapped[str] = mapped_column(String(TITLE_MAX_LENGTH))
    text: Mapped[str | None] = mapped_column(Text)
    categories: Mapped[list[str]] = mapped_column(JSON, default=list)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Lifecycle (migration 0003): a retired item (active false) or one outside its window
    # [available_from, available_until) is never recommended; its events stay.
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    available_from: Mapped[datetime | None] = mapped_column(UTCDateTime)
    available_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


class User(Base):
    __tablename__ = "users"

    user_id: Mapped[str] = mapped_column(String(ID_MAX_LENGTH), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Event(Base):
    """One event: THE definition of its fields. The bulk insert and the readers take their
    columns from here; the bodies (``app/schemas/events.py``) name the same fields, and a test
    checks the two agree. A new field: a column here, a migration, a field in the body."""

    __tablename__ = "events"
    __table_args__ = (
        # A user's history in time order; `seq` (ingestion order) breaks ties between events
        # sharing a timestamp, the same way training orders them (stable sort, file order).
        Index("ix_events_user_time", "user_id", "occurred_at", "seq"),
        Index("ix_events_item_id", "item_id"),
    )

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    event_id: Mapped[str] = mapped_column(String(ID_MAX_LENGTH), unique=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.user_id", ondelete="CASCADE"))
    item_id: Mapped[str] = mapped_column(ForeignKey("items.item_id"))
    type: Mapped[str] = mapped_column(String(EVENT_TYPE_MAX_LENGTH))
    value: Mapped[float | None] = mapped_column(Float)
    text: Mapped[str | None] = mapped_column(Text)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    ingested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def written_columns(table: Table) -> tuple[Column[Any], ...]:
    """The columns a row is inserted with: all but a key the database generates."""
    return tuple(column for column in table.columns if column is not table.autoincrement_column)


EVENTS: Table = Event.__table__  # type: ignore[assignment]
# What an ingested event row holds, in table order.
EVENT_COLUMNS: tuple[str, ...] = tuple(column.name for column in written_columns(EVENTS))


class DriftRecord(Base):
    __tablename__ = "drift_records"
    __table_args__ = (
        # One record per change point: repeated requests must not write it again.
        UniqueConstraint("user_id", "change_event_id", name="uq_drift_records_user_change"),
        Index("ix_drift_records_detected_at", "detected_at"),
        Index("ix_drift_records_user_detected", "user_id", "detected_at"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    user_id: Mapped[str] = mapped_column(ForeignKey("users.user_id", ondelete="CASCADE"))
    detected_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    model_version: Mapped[str] = mapped_column(String(64))
    score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(16))
    change_event_id: Mapped[str] = mapped_column(String(ID_MAX_LENGTH))
    change_at: Mapped[datetime] = mapped_column(UTCDateTime)
    change_index: Mapped[int] = mapped_column(Integer)
    interests_before: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    interests_after: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    # Heaviest topic of interests_before / interests_after (migration 0002), stored so the
    # transition statistics can GROUP BY in SQL on both backends instead of parsing JSON.
    from_topic: Mapped[str | None] = mapped_column(String(ID_MAX_LENGTH))
    to_topic: Mapped[str | None] = mapped_column(String(ID_MAX_LENGTH))


class DriftCheck(Base):
    """One drift check of one user (migration 0002): the denominator of drift rates."""

    __tablename__ = "drift_checks"
    __table_args__ = (
        Index("ix_drift_checks_checked_at", "checked_at"),
        Index("ix_drift_checks_user_checked", "user_id", "checked_at"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    user_id: Mapped[str] = mapped_column(ForeignKey("users.user_id", ondelete="CASCADE"))
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    model_version: Mapped[str] = mapped_column(String(64))
    drift_detected: Mapped[bool] = mapped_column(Boolean)
    record_id: Mapped[int | None] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"),
        ForeignKey("drift_records.id", ondelete="SET NULL"),
    )


class ServiceSecret(Base):
    """Per-deployment secrets created by the migrations (migration 0003): the erasure salt."""

    __tablename__ = "service_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class Impression(Base):
    """One recommendation response shown to a user (migration 0004): the items in rank order
    (position = index in `items`), the version that ranked them and when. Written in batches
    by each worker's impression writer; the online metrics join them with the user's later
    events. Erased with the user."""

    __tablename__ = "impressions"
    __table_args__ = (
        Index("ix_impressions_created_at", "created_at"),
        Index("ix_impressions_user_created", "user_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    recommendation_id: Mapped[str] = mapped_column(String(36), unique=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.user_id", ondelete="CASCADE"))
    model_version: Mapped[str] = mapped_column(String(64))
    items: Mapped[list[str]] = mapped_column(JSON)
    k: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ItemEmbedding(Base):
    """An item's text embedding by one encoder (migration 0005), written by `python -m app
    embed-catalogue` and by serving's catalogue refresher, so a worker that starts reads the
    rows of items its model has not trained on instead of running the encoder over them.

    `encoder_key` names the encoder's weights (app.ml.catalogue.encoder_key): each model version
    fine-tunes its own, and a row is only used by an encoder with the same key. `digest` is what
    the row was embedded from (CatalogueItem.digest: text and categories), so a changed item
    is embedded again. `vector` is float32 little-endian, `dim` values. Deleted with the item.
    """

    __tablename__ = "item_embeddings"

    encoder_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    item_id: Mapped[str] = mapped_column(
        ForeignKey("items.item_id", ondelete="CASCADE"), primary_key=True)
    digest: Mapped[bytes] = mapped_column(LargeBinary(16))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
