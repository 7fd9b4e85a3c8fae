"""Drift statistics: top topics on drift_records, and the drift_checks table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.store.models import UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("drift_records") as batch:
        batch.add_column(sa.Column("from_topic", sa.String(200), nullable=True))
        batch.add_column(sa.Column("to_topic", sa.String(200), nullable=True))
    op.create_table(
        "drift_checks",
        sa.Column("id", BIGINT_ID, autoincrement=True, nullable=False),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("checked_at", UTCDateTime(), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("drift_detected", sa.Boolean(), nullable=False),
        sa.Column("record_id", BIGINT_ID, nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.user_id"], ondelete="CASCADE",
                                name=op.f("fk_drift_checks_user_id_users")),
        sa.ForeignKeyConstraint(["record_id"], ["drift_records.id"], ondelete="SET NULL",
                                name=op.f("fk_drift_checks_record_id_drift_records")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drift_checks")),
    )
    op.create_index("ix_drift_checks_checked_at", "drift_checks", ["checked_at"])
    op.create_index("ix_drift_checks_user_checked", "drift_checks", ["user_id", "checked_at"])


def downgrade() -> None:
    op.drop_index("ix_drift_checks_user_checked", table_name="drift_checks")
    op.drop_index("ix_drift_checks_checked_at", table_name="drift_checks")
    op.drop_table("drift_checks")
    with op.batch_alter_table("drift_records") as batch:
        batch.drop_column("to_topic")
        batch.drop_column("from_topic")
