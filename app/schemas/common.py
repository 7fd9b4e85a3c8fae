"""Field types shared by the request and response bodies."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from app.domain.limits import ID_MAX_LENGTH as ID_MAX_LENGTH  # routers import it from here
from app.domain.limits import ID_PATTERN as ID_PATTERN  # (defined beside the column sizes)

EntityId = Annotated[
    str,
    Field(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN,
          examples=["user-42"],
          description=f"Letters, digits and . _ : @ -, at most {ID_MAX_LENGTH}."),
]


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The last epoch second a datetime holds (9999-12-31T23:59:59Z).
MAX_EPOCH_SECONDS = 253_402_300_799
# Years 1970..9999 at the start of an ISO-8601 time (the schema's form of the epoch limit).
YEAR_PATTERN = r"^(19[7-9][0-9]|[2-9][0-9]{3})-"


def parse_timestamp(value: Any) -> datetime:
    """ISO-8601 text (UTC assumed when it has no offset) or epoch seconds, as aware UTC."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, bool):
        raise ValueError("a timestamp is ISO-8601 text or epoch seconds, not a boolean")
    elif isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("epoch seconds must be a finite number")
        # Checked here, not after conversion: -1e-323 and 253402300799.00003 round into range.
        if not 0 <= value <= MAX_EPOCH_SECONDS:
            raise ValueError(f"epoch seconds must be from 0 to {MAX_EPOCH_SECONDS} "
                             "(1970-01-01 to 9999-12-31)")
        try:
            parsed = datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, OSError, ValueError) as error:
            raise ValueError("epoch seconds out of range") from error
    elif isinstance(value, str):
        text = value.strip()
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            try:
                return parse_timestamp(float(text))
            except ValueError:
                raise ValueError(
                    "not an ISO-8601 timestamp (e.g. 2024-05-01T12:00:00Z) or epoch seconds"
                ) from None
    else:
        raise ValueError("a timestamp is ISO-8601 text or epoch seconds")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:  # 9999-12-31T23:59:59-14:00 is after the last representable UTC time
        parsed = parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError("timestamp out of range: its UTC time is not before year 10000"
                         ) from None
    if parsed < EPOCH:
        raise ValueError("timestamps before 1970-01-01 are not accepted")
    return parsed


Timestamp = Annotated[
    datetime,
    BeforeValidator(parse_timestamp),
    # Documented as what is accepted (clients and fuzzers read the schema): either form.
    WithJsonSchema({"anyOf": [{"type": "string", "format": "date-time",
                               "pattern": YEAR_PATTERN},
                              {"type": "number", "minimum": 0,
                               "maximum": MAX_EPOCH_SECONDS}]}),
    Field(description="ISO-8601 (UTC when no offset is given) or epoch seconds: from "
                      "1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z.",
          examples=["2024-05-01T12:00:00Z"]),
]


# What no store can keep: PostgreSQL text cannot hold NUL, and an unpaired UTF-16 surrogate
# (valid in JSON as an escape, e.g. "\\ud800") has no UTF-8 form. One regex pass: texts are long.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(value: str) -> str:
    found = _UNSTORABLE.search(value)
    if found is not None:
        what = "NUL (\\u0000)" if found.group() == "\x00" else "unpaired surrogate"
        raise ValueError(f"text must not contain {what} characters")
    return value


# Free text of items and events (titles, descriptions, reviews, categories). The schema says
# no NUL (the validator also refuses unpaired surrogates, which JSON Schema cannot express).
NO_NUL_PATTERN = "^[^\\u0000]*$"
StorableText = Annotated[str, AfterValidator(storable_text),
                         Field(json_schema_extra={"pattern": NO_NUL_PATTERN})]


class ErrorOut(BaseModel):
    """Every error response: a stable code, a message for people, and details by code."""

    model_config = ConfigDict(extra="allow")

    error: str = Field(description="stable code, e.g. unauthorized, forbidden, "
                                   "database_unavailable")
    message: str
