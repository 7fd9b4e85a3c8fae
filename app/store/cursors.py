"""The one codec of the API's keyset-pagination cursors (event pages, drift-history pages).

A cursor is opaque to clients: URL-safe base64 (no padding) of the JSON
`{"of": kind, "at": ISO-8601 time, "key": integer}` naming the last row of a page, by the
(time, integer key) order the page is sorted in. Decoding is strict: anything this module did
not produce, or a forged one whose time or key the database could not compare (a key beyond
a bigint, `Infinity`, `1e308`, a time that overflows on the way to UTC), raises
`InvalidCursor`, a 422 naming the `cursor` parameter, never a query.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime

from app.core.exceptions import InvalidCursor
from app.domain.limits import CURSOR_MAX_LENGTH

BIGINT_MAX = 2**63 - 1
EVENTS = "events"
DRIFT_RECORDS = "drift_records"
MAX_CURSOR_CHARS = CURSOR_MAX_LENGTH


def encode(kind: str, at: datetime, key: int) -> str:
    raw = json.dumps({"of": kind, "at": at.astimezone(UTC).isoformat(), "key": key},
                     separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode(kind: str, cursor: str, parameter: str = "cursor") -> tuple[datetime, int]:
    """(time, key) of a cursor `encode(kind, ...)` made; raises InvalidCursor otherwise."""
    if len(cursor) > MAX_CURSOR_CHARS:
        raise InvalidCursor("too long", parameter)
    try:
        raw = base64.urlsafe_b64decode(cursor.encode("ascii") + b"=" * (-len(cursor) % 4))
        data = json.loads(raw, parse_constant=_refuse_constant)
    except (binascii.Error, ValueError, UnicodeError, RecursionError) as error:
        raise InvalidCursor("not a cursor this API returned", parameter) from error
    if not isinstance(data, dict) or data.get("of") != kind:
        raise InvalidCursor("not a cursor of this listing", parameter)
    at_text, key = data.get("at"), data.get("key")
    if not isinstance(key, int) or isinstance(key, bool) or not 0 <= key <= BIGINT_MAX:
        raise InvalidCursor("its key is not an integer in range", parameter)
    if not isinstance(at_text, str):
        raise InvalidCursor("its time is missing", parameter)
    try:
        at = datetime.fromisoformat(at_text)
        if at.tzinfo is None:
            raise ValueError("naive time")
        at = at.astimezone(UTC)
    except (ValueError, OverflowError) as error:
        raise InvalidCursor("its time is not a time in range", parameter) from error
    return at, key


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")
