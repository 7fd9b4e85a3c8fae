"""The API's errors as exceptions.

Every error the service answers is JSON, `{"error": code, "message": text, ...}`; a refused
input (422) adds `detail`, one entry per problem naming the `field` and, in a batch, the `row`.
An exception carries all of it, so a caller can point at the bad row without parsing text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One entry of a 422's `detail`: which field (of which batch row) and why."""

    field: str
    msg: str
    row: int | None = None
    type: str = "invalid"
    loc: tuple[str | int, ...] = ()

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> FieldProblem:
        row = entry.get("row")
        return cls(field=str(entry.get("field", "body")), msg=str(entry.get("msg", "")),
                   row=row if isinstance(row, int) else None,
                   type=str(entry.get("type", "invalid")),
                   loc=tuple(entry.get("loc") or ()))


class DriftRecError(Exception):
    """An error answer of the API (or, as `ConnectionFailed`, no answer at all)."""

    def __init__(self, status: int, code: str, message: str,
                 problems: Sequence[FieldProblem] = (), body: Any = None,
                 request_id: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}" if status else message)
        self.status = status
        self.code = code
        self.message = message
        self.problems: list[FieldProblem] = list(problems)
        self.body = body
        self.request_id = request_id
        self.retry_after = retry_after

    @property
    def fields(self) -> list[str]:
        """The fields the API named, in its order."""
        return [problem.field for problem in self.problems]

    def shifted(self, rows: int) -> DriftRecError:
        """The same error with batch rows counted `rows` further on (a batch that started at
        that position of the caller's input)."""
        problems = [problem if problem.row is None else replace(problem, row=problem.row + rows)
                    for problem in self.problems]
        error = type(self)(self.status, self.code, self.message, problems, self.body,
                           self.request_id, self.retry_after)
        error.__cause__ = self.__cause__
        return error


class InvalidRequest(DriftRecError):
    """422: the input was refused; nothing of the request was written (`problems` says why)."""


class Unauthorized(DriftRecError):
    """401: no valid API key."""


class Forbidden(DriftRecError):
    """403: the key lacks the scope (read, write or admin)."""


class NotFound(DriftRecError):
    """404: no such user or item (or not in the served catalogue)."""


class Conflict(DriftRecError):
    """409: e.g. deleting an item that events reference."""


class Unavailable(DriftRecError):
    """503: the database is down or no model is loaded; retried, then raised."""


class ConnectionFailed(DriftRecError):
    """No answer: the connection failed or timed out on every try (status 0)."""


_BY_STATUS: dict[int, type[DriftRecError]] = {
    401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 422: InvalidRequest,
    503: Unavailable,
}


def error_from_response(status: int, body: Any, request_id: str | None,
                        retry_after: float | None) -> DriftRecError:
    """The exception for an error answer (its class by status)."""
    if isinstance(body, Mapping):
        code = str(body.get("error", "error"))
        message = str(body.get("message", ""))
        detail = body.get("detail")
        problems = [FieldProblem.from_json(entry) for entry in detail
                    if isinstance(entry, Mapping)] if isinstance(detail, list) else []
    else:  # a proxy's HTML page, say
        code, message, problems = "error", str(body)[:500], []
    error_type = _BY_STATUS.get(status, DriftRecError)
    return error_type(status, code, message, problems, body, request_id, retry_after)


__all__ = [
    "Conflict", "ConnectionFailed", "DriftRecError", "FieldProblem", "Forbidden",
    "InvalidRequest", "NotFound", "Unauthorized", "Unavailable", "error_from_response",
]
