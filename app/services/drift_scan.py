"""Batch drift detection over every user in the store (`python -m app drift-scan`).

Runs the same check as `GET /drift/{user_id}` for each user, so dashboards have drift history
and rates right after an import instead of waiting for traffic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.services import interests
from app.services.model_manager import ServedModel
from app.store.db import transaction
from app.store.models import User


@dataclass(frozen=True, slots=True)
class ScanReport:
    users: int
    drifts: int


def all_user_ids(factory: sessionmaker[Session]) -> list[str]:
    with factory() as session:
        return list(session.scalars(select(User.user_id).order_by(User.user_id)))


def scan_users(factory: sessionmaker[Session], model: ServedModel, user_ids: list[str],
               on_user: Callable[[], None] = lambda: None) -> ScanReport:
    """Check each user (one transaction per user, so progress survives an interruption)."""
    drifts = 0
    for user_id in user_ids:
        with transaction(factory) as session:
            drifts += bool(interests.check_drift(session, model, user_id)["drift_detected"])
        on_user()
    return ScanReport(users=len(user_ids), drifts=drifts)
