"""Batch drift detection over every user in the store (`python -m app drift-scan`).

Runs the same check as `GET /drift/{user_id}` for each user, so dashboards have drift history
and rates right after an import instead of waiting for traffic.

The command is a backfill (`backfill=True`): each check, and each drift record it creates, is
stamped with the user's last event time, the earliest moment a live system could have made
that check, instead of the wall clock. Drift rates over time then follow the data (ml-100k
spreads over September 1997 to April 1998) rather than all landing in the hour of the scan.
Live checks (requests, the ingestion queue) keep the wall clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from app.core.exceptions import UnknownUser
from app.services.recommender import Recommender
from app.store import drift_records
from app.store.db import transaction


@dataclass(frozen=True, slots=True)
class ScanReport:
    users: int  # users checked
    drifts: int
    skipped: int = 0  # users with nothing to check (no stored event)


def all_user_ids(factory: sessionmaker[Session], unchecked_only: bool = False) -> list[str]:
    """Every stored user by id; `unchecked_only`: those without any drift check yet."""
    with factory() as session:
        return drift_records.user_ids_to_scan(session, unchecked_only)


def scan_users(factory: sessionmaker[Session], model: Recommender, user_ids: list[str],
               on_user: Callable[[], None] = lambda: None, backfill: bool = False
               ) -> ScanReport:
    """Check each user (one transaction per user, so progress survives an interruption).

    `backfill`: stamp checks and new records with the user's last event time (module
    docstring); otherwise with the wall clock, like a live check."""
    drifts = skipped = 0
    for user_id in user_ids:
        try:
            with transaction(factory) as session:
                result = model.check_drift(session, user_id, backfill=backfill)
                drifts += result.drift_detected
        except UnknownUser:  # a user row without events (e.g. left by an earlier release)
            skipped += 1
        on_user()
    return ScanReport(users=len(user_ids) - skipped, drifts=drifts, skipped=skipped)


def scan_batch(factory: sessionmaker[Session], model: Recommender, user_ids: Sequence[str],
               backfill: bool = True) -> ScanReport:
    """Check a batch of users in one transaction: their checks and records are written and
    committed together (the Ray scan's unit of work, app.services.drift_scan_ray). The
    checks are those of `scan_users`; an interruption loses at most the open batch, which
    `--unchecked-only` then does again."""
    drifts = skipped = 0
    with transaction(factory) as session:
        for user_id in user_ids:
            try:
                result = model.check_drift(session, str(user_id), backfill=backfill)
                drifts += result.drift_detected
            except UnknownUser:  # raised before anything of the user is written
                skipped += 1
    return ScanReport(users=len(user_ids) - skipped, drifts=drifts, skipped=skipped)

