"""The schema comes from Alembic alone, and the ORM models agree with it on both backends."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from app.store.db import make_engine
from app.store.migrate import alembic_config, upgrade_head
from app.store.models import Base


def test_models_and_migrations_agree(database_url: str) -> None:
    engine = make_engine(database_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == []


def test_migrations_create_every_table_and_are_reversible(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    upgrade_head(url)
    engine = make_engine(url)
    assert {"items", "users", "events", "drift_records", "alembic_version"} <= set(
        inspect(engine).get_table_names())
    command.downgrade(alembic_config(url), "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    upgrade_head(url)
    assert "events" in inspect(engine).get_table_names()
    engine.dispose()
