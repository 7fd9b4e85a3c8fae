"""Logging: one JSON object per line (or plain text), tagged with the request id, scrubbed of
credentials.

`configure_logging(settings)` installs one handler on the root logger (replacing the one it
installed before, so building many apps in one process does not stack handlers) and routes
uvicorn's loggers through it. Uvicorn's access log is off: `app.core.request_context` writes
one access line per request with the route template instead of the raw path.

Every line passes through a `Redactor` after formatting, whatever logged it: configured API
keys, `Authorization` values, bearer/basic credentials and passwords in URLs never reach the
output, even if some code (ours or a library's) puts them into a message or a traceback.

Logs never carry data values: every handler on the root logger gets a `DataDetailFilter`,
which rewrites each record before any formatter sees it, dropping the SQL statements and
parameters SQLAlchemy puts into its exceptions (`[SQL: ...]`, `[parameters: ...]`) and the
database's error details (`DETAIL:  Key (user_id)=(...)`), from the message, the exception
text and the stack alike. A row's values (user ids of erased users among them) are personal
data; the error class and the constraint's name are enough to debug from.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any, Literal

from app.core.config import Settings
from app.core.security import parse_api_keys

REDACTED = "[REDACTED]"
MIN_SECRET_CHARS = 4
REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# The request being served by this task or thread (None outside requests). Set by the request
# middleware; starlette copies the context into the threads that run sync endpoints.
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

# LogRecord attributes that are not "extra" fields (plus ones formatters add, and uvicorn's
# ANSI-coloured duplicate of its message).
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "color_message", "request_id", "taskName"}
_CORE_FIELDS = ("time", "level", "logger", "message", "request_id")

# Credentials in free text: each keeps its label (group "label") and loses its value.
_CREDENTIAL_PATTERNS = (
    # Authorization: Bearer xyz / "authorization": "xyz" / proxy-authorization=xyz
    re.compile(r"(?i)(?P<label>\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?"
               r"(?:(?:bearer|basic|token|digest)\s+)?)(?P<value>[^\s\"',;}\]]+)"),
    # "Bearer <token>" in any case; "Basic <base64>" capitalised, as HTTP writes it (lower-case
    # "basic" followed by a word is too common in prose to scrub)
    re.compile(r"(?P<label>\b(?i:bearer)\s+|\bBasic\s+)(?P<value>[A-Za-z0-9._~+/=-]{8,})"),
    # api_key=..., DRIFTREC_API_KEYS=..., "password": "..."
    re.compile(r"(?i)(?P<label>\b[A-Za-z_]*(?:api[_-]?keys?|password|passwd|secret|token)"
               r"[\"']?\s*[:=]\s*[\"']?)(?P<value>[^\s\"',;&}\]]+)"),
    # scheme://user:password@host
    re.compile(r"(?P<label>://[^:/@\s]+:)(?P<value>[^@/\s]+)(?=@)"),
)
# Runs of characters API keys are usually made of (URL-safe base64, hex): hashed and compared
# with the configured keys' digests, which also catches keys configured as `sha256=<hex>`.
_TOKEN = re.compile(r"[A-Za-z0-9_\-.~+/]{8,}={0,2}")


# What a database error carries besides its kind: SQLAlchemy appends the statement and its
# parameters (each to the end of the error's text: the statement may span lines, parameters
# are a repr); PostgreSQL's DETAIL names the offending row's key values.
_SQL_PARTS = re.compile(r"\[(?:SQL|parameters): .*?(?=\n\(Background on this error at|\n\n|\Z)",
                        re.DOTALL)
_DETAIL_LINE = re.compile(r"(?m)^(?P<label>[ \t]*DETAIL:)[^\n]*")
_KEY_VALUES = re.compile(r"\b(?P<label>Key \([^()]*\)=)\(.*")  # the rest of that line
DATA_DROPPED = "[data values dropped from the log]"


def drop_data_values(text: str) -> str:
    """``text`` without SQL statements, SQL parameters and database error details."""
    if "[SQL: " in text or "[parameters: " in text:
        text = _SQL_PARTS.sub(DATA_DROPPED, text)
    if "DETAIL:" in text:
        text = _DETAIL_LINE.sub(lambda m: f"{m.group('label')}  {DATA_DROPPED}", text)
    if "Key (" in text:
        text = _KEY_VALUES.sub(lambda m: f"{m.group('label')}{DATA_DROPPED}", text)
    return text


class DataDetailFilter(logging.Filter):
    """Rewrites every record it sees so that no handler can write data values (see the
    module docstring): the message is rendered and cleaned, the exception and the stack are
    rendered once (as ``exc_text``, which formatters use instead of rendering their own) and
    cleaned. Records are never dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_data_values_dropped", False):  # another handler's filter did
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: left for the formatter to report as it would
            message = None
        if message is not None:
            cleaned = drop_data_values(message)
            if cleaned != message or record.args:
                record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = _PLAIN.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = drop_data_values(record.exc_text)
        if record.stack_info:
            record.stack_info = drop_data_values(record.stack_info)
        setattr(record, "_data_values_dropped", True)  # noqa: B010 -- LogRecord declares no such field
        return True


_PLAIN = logging.Formatter()
_DATA_FILTER = DataDetailFilter()


def add_data_filter(handler: logging.Handler) -> logging.Handler:
    """Give ``handler`` the data-values filter (once)."""
    if not any(isinstance(f, DataDetailFilter) for f in handler.filters):
        handler.addFilter(_DATA_FILTER)
    return handler


def accept_request_id(presented: str | None) -> str:
    """The caller's `X-Request-ID` when it is safe to log and echo, otherwise a new one."""
    if presented is not None and REQUEST_ID_PATTERN.fullmatch(presented):
        return presented
    return uuid.uuid4().hex


class Redactor:
    """Removes credentials from formatted log text (see the module docstring)."""

    def __init__(self, secrets: Iterable[str] = (), digests: Iterable[bytes] = ()) -> None:
        variants = set()
        for secret in secrets:
            # A shorter "secret" would scrub ordinary words out of every line; it is no secret.
            if len(secret) >= MIN_SECRET_CHARS:
                variants.add(secret)
                # as it appears inside a JSON string
                variants.add(json.dumps(secret, ensure_ascii=False)[1:-1])
        # Longest first, so a key that contains another key is removed whole.
        self._secrets = sorted(variants, key=len, reverse=True)
        self._digests = frozenset(digests)

    @classmethod
    def from_settings(cls, settings: Settings) -> Redactor:
        """Redacts the configured API keys: as written in the setting (plaintext or digest),
        the setting as a whole, and any key whose digest is configured."""
        plaintext = [settings.api_keys.strip()]
        for entry in settings.api_keys.split(";"):
            secret = entry.strip().rpartition(":")[0]
            plaintext.append(secret.removeprefix("sha256="))
        try:
            digests = [key.digest for key in parse_api_keys(settings.api_keys)]
        except ValueError:  # malformed keys stop the app elsewhere; still scrub what we can
            digests = []
        return cls(plaintext, digests)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        for pattern in _CREDENTIAL_PATTERNS:
            text = pattern.sub(_redact_value, text)
        if self._digests:
            text = _TOKEN.sub(self._token_or_redacted, text)
        return text

    def _token_or_redacted(self, match: re.Match[str]) -> str:
        token = match.group(0)
        if hashlib.sha256(token.encode()).digest() in self._digests:
            return REDACTED
        return token


def _redact_value(match: re.Match[str]) -> str:
    if match.group("value").startswith(REDACTED[:-1]):  # a key already replaced above
        return match.group(0)
    return match.group("label") + REDACTED


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in record.__dict__.items()
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_")}


def _request_id_of(record: logging.LogRecord) -> str | None:
    return getattr(record, "request_id", None) or request_id_var.get()


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", "request_id"?, ...extra, "exception"?}`."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = _request_id_of(record)
        if request_id is not None:
            line["request_id"] = request_id
        for key, value in _extra_fields(record).items():
            if key not in _CORE_FIELDS:  # extras never overwrite the core fields
                line[key] = value
        if record.exc_info or record.exc_text:
            # exc_text: the rendering the data-values filter cleaned (Formatter.format uses it
            # the same way)
            line["exception"] = record.exc_text or self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return self.redactor(json.dumps(line, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """`time level logger [request id] message key=value...` for people reading a terminal."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(request_tag)s %(message)s")
        self.redactor = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        request_id = _request_id_of(record)
        record.request_tag = f" [{request_id}]" if request_id else ""
        try:
            text = super().format(record)
        finally:
            del record.request_tag
        extras = " ".join(f"{key}={value}" for key, value in _extra_fields(record).items())
        return self.redactor(f"{text} {extras}" if extras else text)


class StdoutHandler(logging.StreamHandler):
    """Writes to whatever `sys.stdout` is at the time (test runners swap it per test).

    stdout, not stderr: logs are the service's output stream (as uvicorn's access log was), and
    a parent that pipes stderr only to read it after a failure (bench/common.py) is never
    blocked by a full pipe of access lines."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self) -> IO[str]:
        return sys.stdout

    @stream.setter
    def stream(self, _: IO[str]) -> None:
        pass


_OUR_HANDLER = "_driftrec_handler"


def make_formatter(settings: Settings) -> logging.Formatter:
    redactor = Redactor.from_settings(settings)
    kind: Literal["json", "text"] = settings.log_format
    return JsonFormatter(redactor) if kind == "json" else TextFormatter(redactor)


def configure_logging(settings: Settings, stream: IO[str] | None = None) -> logging.Handler:
    """Install the service's log handler on the root logger (idempotent; returns it).

    `stream`: where to write (default: stdout, looked up at each write)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _OUR_HANDLER, False)]:
        root.removeHandler(handler)
    handler: logging.Handler = StdoutHandler() if stream is None else logging.StreamHandler(stream)
    setattr(handler, _OUR_HANDLER, True)
    handler.setFormatter(make_formatter(settings))
    root.addHandler(handler)
    for each in root.handlers:  # ours and any other (a test runner's, an operator's)
        add_data_filter(each)
    root.setLevel(settings.log_level.upper())
    # uvicorn's loggers keep handlers of their own unless told otherwise: send them through ours.
    for name in ("uvicorn", "uvicorn.error"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False  # our access line replaces it (route template, request id)
    return handler


def uvicorn_log_config(settings: Settings) -> dict[str, Any]:
    """uvicorn's `log_config`: its loggers through a root handler with our formatter.

    uvicorn applies this in the server process and in every worker it spawns, before the app
    (whose `create_app` installs the same handler again) is loaded."""
    level = settings.log_level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"driftrec": {"()": "app.core.logging.formatter_from_environment"}},
        "handlers": {"stdout": {"()": "app.core.logging.marked_stdout_handler",
                                "formatter": "driftrec"}},
        "root": {"handlers": ["stdout"], "level": level},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True, "level": level},
            "uvicorn.error": {"handlers": [], "propagate": True, "level": level},
            "uvicorn.access": {"handlers": [], "propagate": False, "level": "WARNING"},
        },
    }


def formatter_from_environment() -> logging.Formatter:
    """For `logging.config.dictConfig` in uvicorn workers: settings from the environment."""
    from app.core.config import get_settings

    return make_formatter(get_settings())


def marked_stdout_handler() -> logging.Handler:
    handler = StdoutHandler()
    setattr(handler, _OUR_HANDLER, True)
    return add_data_filter(handler)
