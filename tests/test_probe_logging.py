"""Logs never carry data values: a real database error (a foreign-key violation naming a user
id, as when a drift check races ``DELETE /users/{id}``) logged through the service's logging
setup keeps its kind and constraint, and loses the id from the message, the exception text and
the traceback: no ``[SQL: ...]``, no ``[parameters: ...]``, no ``DETAIL:  Key (user_id)=(...)``.
"""

from __future__ import annotations

import io
import logging
from datetime import UTC, datetime

import pytest
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from app.core.config import Settings
from app.core.logging import configure_logging
from app.store.db import make_engine
from app.store.models import DriftCheck

ERASED = "erased-user-4242@example.com"


def _foreign_key_violation(url: str) -> IntegrityError:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(insert(DriftCheck).values(
                user_id=ERASED, checked_at=datetime.now(UTC), model_version="7",
                drift_detected=False))
    except IntegrityError as error:
        return error
    finally:
        engine.dispose()
    raise AssertionError("the insert should have violated the foreign key")


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_database_error_is_logged_without_its_data_values(
        pg_database: str, log_format: str) -> None:
    error = _foreign_key_violation(pg_database)
    # what would leak without the filter: the id in the database's detail and in the parameters
    assert f"Key (user_id)=({ERASED})" in str(error) and "[parameters: " in str(error)
    settings = Settings(database_url=pg_database, log_format=log_format)  # type: ignore[arg-type]
    buffer = io.StringIO()
    configure_logging(settings, buffer)
    try:
        logger = logging.getLogger("driftrec.test.probe")
        try:
            raise error
        except IntegrityError:
            logger.exception("drift check failed")
        logger.warning("write failed: %s", error)
        logger.error("write failed", exc_info=error)
        logger.error(f"write failed: {error!r}", stack_info=True)
    finally:
        configure_logging(settings)
    output = buffer.getvalue()
    assert ERASED not in output, output
    assert "erased-user-4242" not in output
    for leak in ("[SQL: ", "[parameters: ", "INSERT INTO drift_checks"):
        assert leak not in output, output
    # still useful: the error's kind, the constraint, the traceback's frames
    assert "IntegrityError" in output and "ForeignKeyViolation" in output
    assert "fk_drift_checks_user_id_users" in output
    assert "Traceback (most recent call last)" in output
    assert "data values dropped from the log" in output


def test_other_handlers_on_the_root_logger_get_the_filter_too(pg_database: str) -> None:
    error = _foreign_key_violation(pg_database)
    settings = Settings(database_url=pg_database)
    other = io.StringIO()
    handler = logging.StreamHandler(other)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        configure_logging(settings, io.StringIO())
        logging.getLogger("driftrec.test.probe").error("failed: %s", error, exc_info=error)
    finally:
        root.removeHandler(handler)
        configure_logging(settings)
    assert ERASED not in other.getvalue() and "IntegrityError" in other.getvalue()
