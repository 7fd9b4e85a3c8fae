"""Item lifecycle (active flag, availability window) and the erasure salt.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.store.models import UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("active", sa.Boolean(), nullable=False,
                                   server_default=sa.true()))
        batch.add_column(sa.Column("available_from", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("available_until", UTCDateTime(), nullable=True))
    op.create_table(
        "service_secrets",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.String(256), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_service_secrets")),
    )
    # One random salt per deployment for the digests erasure logs write (never an id).
    secrets_table = sa.table("service_secrets", sa.column("name", sa.String),
                             sa.column("value", sa.String))
    op.bulk_insert(secrets_table, [{"name": "erasure_salt", "value": secrets.token_hex(32)}])


def downgrade() -> None:
    op.drop_table("service_secrets")
    with op.batch_alter_table("items") as batch:
        batch.drop_column("available_until")
        batch.drop_column("available_from")
        batch.drop_column("active")
