"""SQL for drift records and drift checks: writes, history pages, aggregated statistics.

The same code runs on SQLite and PostgreSQL; statistics are aggregated by the database
(GROUP BY), only the two small aggregates of ``drift_summary`` are merged in Python.

Definitions (time ranges are ``since <= t < until``; either end may be None = open):

- a *check* is one drift evaluation of one user (``record_check``), whatever its outcome;
- ``users_checked`` of a bucket = distinct users with a check whose ``checked_at`` is in it;
- ``drifts`` of a bucket = drift records whose ``detected_at`` is in it (one per change point);
- ``drift_rate = drifts / users_checked`` (None when no user was checked in the bucket);
- buckets are UTC hours / days / ISO weeks (starting Monday 00:00 UTC); buckets with neither
  checks nor drifts are left out;
- times: live checks are stamped with the wall clock; the batch scan (``python -m app
  drift-scan``) is a backfill and stamps each check and record with the user's last event time
  (passed as ``checked_at`` / ``detected_at``), the earliest moment a live system could have
  made that check. An imported
  history (ml-100k is from 1997-98) then spreads over the buckets its data covers instead of
  piling up in the hour the scan ran;
- a *transition* is the pair (``from_topic``, ``to_topic``): the heaviest topic of
  ``interests_before`` and of ``interests_after`` (ties by name), stored by ``record_drift``.
  Records missing either side are not counted; ``A -> A`` (the top topic stayed, the rest of
  the mix moved) counts like any other pair.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, Select, and_, func, or_, select, type_coerce
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.exceptions import InvalidCursor as InvalidCursor  # raised by decode_cursor
from app.core.exceptions import UnknownUser
from app.domain.profiles import top_topic
from app.store import cursors
from app.store.models import DriftCheck, DriftRecord, Event, User, UTCDateTime, utcnow
from app.store.repository import _insert

Bucket = Literal["hour", "day", "week"]
BUCKETS: tuple[Bucket, ...] = ("hour", "day", "week")
# SQLite keeps UTCDateTime values as "YYYY-MM-DD HH:MM:SS.ffffff" text in UTC.
_SQLITE_BUCKET = {
    "hour": ("%Y-%m-%d %H:00:00",),
    "day": ("%Y-%m-%d 00:00:00",),
    "week": ("%Y-%m-%d 00:00:00", "weekday 0", "-6 days"),  # next Sunday (or today) - 6 days
}


# session.info keys: drift records this session's open transaction created (app.core.metrics
# counts them), their ids (the drift webhook sends them) and the drift checks it logged.
NEW_DRIFT_RECORDS = "driftrec.new_drift_records"
NEW_DRIFT_RECORD_IDS = "driftrec.new_drift_record_ids"
NEW_DRIFT_CHECKS = "driftrec.new_drift_checks"


def take_new_records(session: Session) -> int:
    """Drift records created in the session's transaction since the last call (for metrics,
    at commit)."""
    return int(session.info.pop(NEW_DRIFT_RECORDS, 0))


def take_new_record_ids(session: Session) -> list[int]:
    """Ids of the drift records created in the session's transaction since the last call
    (for post-commit listeners: read at commit, they are stored)."""
    return list(session.info.pop(NEW_DRIFT_RECORD_IDS, ()))


def take_new_checks(session: Session) -> int:
    """Drift checks logged in the session's transaction since the last call."""
    return int(session.info.pop(NEW_DRIFT_CHECKS, 0))


def forget_new_records(session: Session) -> None:
    """Drop the notes of a transaction that ended without committing them."""
    for key in (NEW_DRIFT_RECORDS, NEW_DRIFT_RECORD_IDS, NEW_DRIFT_CHECKS):
        session.info.pop(key, None)


def user_ids_to_scan(session: Session, unchecked_only: bool = False) -> list[str]:
    """Every stored user, by id; with ``unchecked_only`` those without any drift check yet
    (so an interrupted or repeated bootstrap scan does only the remaining work)."""
    query = select(User.user_id).order_by(User.user_id)
    if unchecked_only:
        query = query.where(~select(DriftCheck.id).where(DriftCheck.user_id == User.user_id)
                            .exists())
    return list(session.scalars(query))


@contextlib.contextmanager
def _user_must_exist(user_id: str) -> Iterator[None]:
    """A write naming a user erased since the check read their events: UnknownUser (a 404, a
    skipped background check), not the database's error, whose text names the user."""
    try:
        yield
    except IntegrityError as error:
        if not _foreign_key_violation(error):
            raise
        raise UnknownUser(user_id) from None


def _foreign_key_violation(error: IntegrityError) -> bool:
    code = getattr(error.orig, "sqlstate", None)  # psycopg
    return code == "23503" or "FOREIGN KEY constraint failed" in str(error.orig)


def record_drift(
    session: Session,
    *,
    user_id: str,
    change_event_id: str,
    change_at: datetime,
    change_index: int,
    score: float,
    threshold: float,
    kind: str,
    model_version: str,
    interests_before: Mapping[str, float],
    interests_after: Mapping[str, float],
    detected_at: datetime | None = None,
) -> tuple[DriftRecord, bool]:
    """Store a change point once: (the stored record, whether this call created it).

    INSERT ... ON CONFLICT DO NOTHING on (user_id, change_event_id), then read the row back:
    concurrent calls for the same change point all get the one row, and exactly one of them
    gets ``created=True``. The user must exist (foreign key).
    """
    values = {
        "user_id": user_id, "change_event_id": change_event_id, "change_at": change_at,
        "change_index": change_index, "score": score, "threshold": threshold, "kind": kind,
        "model_version": model_version, "detected_at": detected_at or utcnow(),
        "interests_before": dict(interests_before), "interests_after": dict(interests_after),
        "from_topic": top_topic(interests_before), "to_topic": top_topic(interests_after),
    }
    statement = (
        _insert(session, DriftRecord)
        .values(**values)
        .on_conflict_do_nothing(index_elements=[DriftRecord.user_id,
                                                DriftRecord.change_event_id])
        .returning(DriftRecord.id)
    )
    with _user_must_exist(user_id):
        created_id = session.execute(statement).scalar_one_or_none()
    created = created_id is not None
    if created:  # counted by the metrics (and sent) when (if) the transaction commits
        session.info[NEW_DRIFT_RECORDS] = session.info.get(NEW_DRIFT_RECORDS, 0) + 1
        session.info.setdefault(NEW_DRIFT_RECORD_IDS, []).append(int(created_id))
    record = session.scalars(
        select(DriftRecord)
        .where(DriftRecord.user_id == user_id, DriftRecord.change_event_id == change_event_id)
        .execution_options(populate_existing=True)
    ).one()
    return record, created


def record_check(
    session: Session,
    *,
    user_id: str,
    model_version: str,
    drift_detected: bool,
    record_id: int | None = None,
    checked_at: datetime | None = None,
) -> DriftCheck:
    """Log one drift check of a user (the denominator of drift rates)."""
    check = DriftCheck(user_id=user_id, model_version=model_version,
                       drift_detected=drift_detected, record_id=record_id,
                       checked_at=checked_at or utcnow())
    session.add(check)
    with _user_must_exist(user_id):
        session.flush()
    session.info[NEW_DRIFT_CHECKS] = session.info.get(NEW_DRIFT_CHECKS, 0) + 1
    return check


def checked_since_last_event(session: Session, user_id: str, model_version: str) -> bool:
    """Whether `model_version` already checked the user after their last event was stored
    (a check of the same events: logging it again would add nothing to the drift rates)."""
    last_ingested = (select(func.max(Event.ingested_at)).where(Event.user_id == user_id)
                     .scalar_subquery())
    query = (select(DriftCheck.id)
             .where(DriftCheck.user_id == user_id, DriftCheck.model_version == model_version,
                    DriftCheck.checked_at >= last_ingested)
             .limit(1))
    return session.scalar(query) is not None


def encode_cursor(record: DriftRecord) -> str:
    """Opaque cursor pointing just after ``record`` in newest-first order."""
    return cursors.encode(cursors.DRIFT_RECORDS, record.detected_at, record.id)


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """(detected_at, id) of a cursor; raises InvalidCursor when it is not one of ours."""
    return cursors.decode(cursors.DRIFT_RECORDS, cursor)


def drift_history(
    session: Session,
    user_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    kind: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[DriftRecord], str | None]:
    """A page of drift records, newest first by (detected_at, id), and the next page's cursor
    (None on the last page). Keyset pagination: pages stay consistent while rows are added."""
    if limit < 1:
        raise ValueError("limit must be >= 1")
    query: Select[tuple[DriftRecord]] = select(DriftRecord).where(
        *_range(DriftRecord.detected_at, since, until))
    if user_id is not None:
        query = query.where(DriftRecord.user_id == user_id)
    if kind is not None:
        query = query.where(DriftRecord.kind == kind)
    if cursor is not None:
        at, record_id = decode_cursor(cursor)
        query = query.where(or_(DriftRecord.detected_at < at,
                                and_(DriftRecord.detected_at == at, DriftRecord.id < record_id)))
    query = query.order_by(DriftRecord.detected_at.desc(), DriftRecord.id.desc()).limit(limit + 1)
    rows = list(session.scalars(query))
    if len(rows) <= limit:
        return rows, None
    return rows[:limit], encode_cursor(rows[limit - 1])


def drift_summary(
    session: Session, since: datetime | None, until: datetime | None, bucket: Bucket = "day"
) -> list[dict[str, Any]]:
    """Per time bucket, oldest first: ``{bucket_start, users_checked, drifts, drift_rate}``
    (definitions in the module docstring; ``bucket_start`` is an aware UTC datetime)."""
    if bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {BUCKETS}")
    # GROUP BY the output label: PostgreSQL binds the bucket expression's literals as separate
    # parameters in SELECT and GROUP BY and would not see the two expressions as equal.
    checks = session.execute(
        select(_bucket(session, DriftCheck.checked_at, bucket).label("bucket_start"),
               func.count(func.distinct(DriftCheck.user_id)))
        .where(*_range(DriftCheck.checked_at, since, until))
        .group_by("bucket_start")
    ).all()
    drifts = session.execute(
        select(_bucket(session, DriftRecord.detected_at, bucket).label("bucket_start"),
               func.count(DriftRecord.id))
        .where(*_range(DriftRecord.detected_at, since, until))
        .group_by("bucket_start")
    ).all()
    users = {start: int(n) for start, n in checks}
    found = {start: int(n) for start, n in drifts}
    return [
        {"bucket_start": start, "users_checked": users.get(start, 0),
         "drifts": found.get(start, 0),
         "drift_rate": found.get(start, 0) / users[start] if users.get(start) else None}
        for start in sorted(users.keys() | found.keys())
    ]


def top_transitions(
    session: Session, since: datetime | None, until: datetime | None, limit: int = 10
) -> list[dict[str, Any]]:
    """The most frequent ``{from, to, count}`` topic transitions of drift records detected in
    the range, most frequent first (ties by from, then to)."""
    count = func.count(DriftRecord.id).label("n")
    rows = session.execute(
        select(DriftRecord.from_topic, DriftRecord.to_topic, count)
        .where(DriftRecord.from_topic.is_not(None), DriftRecord.to_topic.is_not(None),
               *_range(DriftRecord.detected_at, since, until))
        .group_by(DriftRecord.from_topic, DriftRecord.to_topic)
        .order_by(count.desc(), DriftRecord.from_topic, DriftRecord.to_topic)
        .limit(limit)
    ).all()
    return [{"from": source, "to": target, "count": int(n)} for source, target, n in rows]


def _range(column: Any, since: datetime | None, until: datetime | None) -> list[Any]:
    conditions = []
    if since is not None:
        conditions.append(column >= since)
    if until is not None:
        conditions.append(column < until)
    return conditions


def _bucket(session: Session, column: Any, bucket: Bucket) -> ColumnElement[datetime]:
    """Start of the UTC bucket holding ``column``, read back as an aware datetime."""
    if session.get_bind().dialect.name == "postgresql":
        # date_trunc on timestamptz would truncate in the session's time zone: go to UTC first.
        start: ColumnElement[Any] = func.date_trunc(bucket, func.timezone("UTC", column))
    else:
        start = func.strftime(_SQLITE_BUCKET[bucket][0], column, *_SQLITE_BUCKET[bucket][1:])
    return type_coerce(start, UTCDateTime())
