"""Impressions: what each recommendation response showed, for online metrics per version.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.store.models import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "impressions",
        sa.Column("id", BIGINT_ID, autoincrement=True, nullable=False),
        sa.Column("recommendation_id", sa.String(36), nullable=False),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("items", sa.JSON(), nullable=False),
        sa.Column("k", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.user_id"], ondelete="CASCADE",
                                name=op.f("fk_impressions_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_impressions")),
        sa.UniqueConstraint("recommendation_id", name=op.f("uq_impressions_recommendation_id")),
    )
    op.create_index("ix_impressions_created_at", "impressions", ["created_at"])
    op.create_index("ix_impressions_user_created", "impressions", ["user_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_impressions_user_created", table_name="impressions")
    op.drop_index("ix_impressions_created_at", table_name="impressions")
    op.drop_table("impressions")
