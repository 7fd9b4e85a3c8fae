"""The one codec of the API's keyset-pagination cursors (event pages, drift-history pages,
the catalogue).

A cursor is opaque to clients: URL-safe base64 (no padding) of the JSON
`{"of": kind, "at": ISO-8601 time, "key": integer}` naming the last row of a page, by the
(time, integer key) order the page is sorted in; the catalogue, sorted by item id alone, has
`{"of": "items", "id": item id}`. Decoding is strict: anything this module did not produce, or
a forged one whose time, key or id the database could not compare (a key beyond a bigint,
`Infinity`, `1e308`, a time that overflows on the way to UTC, an id that no id can be: NUL,
empty, too long), raises `InvalidCursor`, a 422 naming the `cursor` parameter, never a query.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime
from typing import Any

from app.core.exceptions import InvalidCursor
from app.domain.limits import CURSOR_MAX_LENGTH, ID_MAX_LENGTH, ID_PATTERN, ITEM_CURSOR_MAX_LENGTH

BIGINT_MAX = 2**63 - 1
EVENTS = "events"
DRIFT_RECORDS = "drift_records"
ITEMS = "items"
MAX_CURSOR_CHARS = CURSOR_MAX_LENGTH
_ID = re.compile(ID_PATTERN)


def encode(kind: str, at: datetime, key: int) -> str:
    raw = json.dumps({"of": kind, "at": at.astimezone(UTC).isoformat(), "key": key},
                     separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def encode_id(kind: str, item_id: str) -> str:
    """The cursor after the row whose (text) id is `item_id`, in a listing sorted by id."""
    raw = json.dumps({"of": kind, "id": item_id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_id(kind: str, cursor: str, parameter: str = "cursor") -> str:
    """The id of a cursor `encode_id(kind, ...)` made; raises InvalidCursor otherwise."""
    data = _payload(kind, cursor, parameter, ITEM_CURSOR_MAX_LENGTH)
    item_id = data.get("id")
    if (not isinstance(item_id, str) or not 0 < len(item_id) <= ID_MAX_LENGTH
            or _ID.fullmatch(item_id) is None):
        raise InvalidCursor("its id is not an id", parameter)
    return item_id


def _payload(kind: str, cursor: str, parameter: str, max_chars: int) -> dict[str, Any]:
    """The JSON object inside a cursor of `kind`; raises InvalidCursor otherwise."""
    if len(cursor) > max_chars:
        raise InvalidCursor("too long", parameter)
    try:
        raw = base64.urlsafe_b64decode(cursor.encode("ascii") + b"=" * (-len(cursor) % 4))
        data = json.loads(raw, parse_constant=_refuse_constant)
    except (binascii.Error, ValueError, UnicodeError, RecursionError) as error:
        raise InvalidCursor("not a cursor this API returned", parameter) from error
    if not isinstance(data, dict) or data.get("of") != kind:
        raise InvalidCursor("not a cursor of this listing", parameter)
    return data


def decode(kind: str, cursor: str, parameter: str = "cursor") -> tuple[datetime, int]:
    """(time, key) of a cursor `encode(kind, ...)` made; raises InvalidCursor otherwise."""
    data = _payload(kind, cursor, parameter, MAX_CURSOR_CHARS)
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
