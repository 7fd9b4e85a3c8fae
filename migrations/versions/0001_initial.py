"""Initial schema: items, users, events, drift_records.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.store.models import UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "items",
        sa.Column("item_id", sa.String(200), nullable=False),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("categories", sa.JSON(), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("item_id", name=op.f("pk_items")),
    )
    op.create_table(
        "users",
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_users")),
    )
    op.create_table(
        "events",
        sa.Column("seq", BIGINT_ID, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("item_id", sa.String(200), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("context", sa.JSON(), nullable=False),
        sa.Column("ingested_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["item_id"], ["items.item_id"],
                                name=op.f("fk_events_item_id_items")),
        sa.ForeignKeyConstraint(["user_id"], ["users.user_id"], ondelete="CASCADE",
                                name=op.f("fk_events_user_id_users")),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_events")),
        sa.UniqueConstraint("event_id", name=op.f("uq_events_event_id")),
    )
    op.create_index("ix_events_user_time", "events", ["user_id", "occurred_at", "seq"])
    op.create_index("ix_events_item_id", "events", ["item_id"])
    op.create_table(
        "drift_records",
        sa.Column("id", BIGINT_ID, autoincrement=True, nullable=False),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("detected_at", UTCDateTime(), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("change_event_id", sa.String(200), nullable=False),
        sa.Column("change_at", UTCDateTime(), nullable=False),
        sa.Column("change_index", sa.Integer(), nullable=False),
        sa.Column("interests_before", sa.JSON(), nullable=False),
        sa.Column("interests_after", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.user_id"], ondelete="CASCADE",
                                name=op.f("fk_drift_records_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drift_records")),
        sa.UniqueConstraint("user_id", "change_event_id", name="uq_drift_records_user_change"),
    )
    op.create_index("ix_drift_records_detected_at", "drift_records", ["detected_at"])
    op.create_index("ix_drift_records_user_detected", "drift_records", ["user_id", "detected_at"])


def downgrade() -> None:
    op.drop_table("drift_records")
    op.drop_index("ix_events_item_id", table_name="events")
    op.drop_index("ix_events_user_time", table_name="events")
    op.drop_table("events")
    op.drop_table("users")
    op.drop_table("items")
