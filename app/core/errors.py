"""Every error is JSON a person can act on: `{"error": code, "message": text, ...}`.

A database outage is a 503 with a retry hint, never a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.exceptions import FieldProblem, InvalidInput, UnknownUser

logger = logging.getLogger("driftrec.errors")

RETRY_AFTER_SECONDS = "5"
# RFC 6750's challenge of a 401: Bearer, so browsers do not pop up a login dialog for the API
# (the dashboard's pages challenge with Basic instead).
BEARER_CHALLENGE = 'Bearer realm="DriftRec"'


class ApiError(Exception):
    """An error with a status, a stable code and a message for people."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    body = {"error": code, "message": message, **extra}
    return JSONResponse(jsonable_encoder(body), status_code=status, headers=headers)


def _field_of(loc: list[Any]) -> tuple[int | None, str]:
    # ("body", "events", 3, "timestamp") -> row 3, field "timestamp"
    parts = [p for p in loc if p != "body"]
    rows = [p for p in parts if isinstance(p, int)]
    names = [str(p) for p in parts if not isinstance(p, int)]
    return (rows[0] if rows else None), (names[-1] if names else "body")


def _validation_details(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    details = []
    for error in errors:
        row, field = _field_of(list(error.get("loc", ())))
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        if error.get("type") == "json_invalid":
            # Its number is a character offset, not a row.
            reason = (error.get("ctx") or {}).get("error")
            message = f"{message} at character {row}" + (f": {reason}" if reason else "")
            row, field = None, "body"
        details.append({"loc": list(error.get("loc", ())), "msg": message,
                        "type": error.get("type", "invalid"), "row": row, "field": field})
    return details


def _summary(details: list[dict[str, Any]]) -> str:
    shown = []
    for d in details[:5]:
        where = ("body" if d["field"] == "body"
                 else ".".join(str(p) for p in d["loc"] if p != "body"))
        shown.append(f"{where}: {d['msg']}")
    more = f" (and {len(details) - 5} more)" if len(details) > 5 else ""
    return "invalid request; nothing was written. " + "; ".join(shown) + more


def validation_response(details: list[dict[str, Any]]) -> JSONResponse:
    """The one 422 body of the API: every refusal of bad input goes through here."""
    return error_response(422, "validation_error", _summary(details), detail=details)


async def _on_validation(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return validation_response(_validation_details(list(error.errors())))


async def _on_invalid_input(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, InvalidInput)
    return validation_response([problem.as_dict() for problem in error.problems])


async def _on_unknown_user(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, UnknownUser)
    return error_response(404, "not_found", str(error), user_id=error.user_id)


async def _on_api_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ApiError)
    headers = ({"Retry-After": RETRY_AFTER_SECONDS} if error.status == 503
               else {"WWW-Authenticate": BEARER_CHALLENGE} if error.status == 401 else None)
    return error_response(error.status, error.code, error.message, headers, **error.extra)


async def _on_http(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    if error.status_code == 400 and isinstance(error.__cause__, ValueError | RecursionError):
        # FastAPI's body parser: bytes that are not UTF-8, or JSON nested deeper than Python's
        # parser goes. Answered like any other body that is not JSON (a 422 naming the body),
        # not as a bare "there was an error parsing the body".
        problem = ("nests too deeply" if isinstance(error.__cause__, RecursionError)
                   else "is not UTF-8 encoded JSON")
        return validation_response(
            [FieldProblem(("body",), f"the body {problem}", "json_invalid").as_dict()])
    code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized",
            403: "forbidden", 413: "payload_too_large"}.get(error.status_code, "http_error")
    # a 405's Allow header (every method of the path) is set by app.core.request_context,
    # which knows the routes; this module imports nothing of the app but its exceptions
    headers = dict(error.headers) if error.headers else {}
    return error_response(error.status_code, code, str(error.detail), headers or None)


async def _on_database(_: Request, error: Exception) -> JSONResponse:
    logger.warning("database unavailable: %s", type(error).__name__)
    return error_response(503, "database_unavailable",
                          "the database is unreachable; nothing was written, retry shortly",
                          {"Retry-After": RETRY_AFTER_SECONDS})


async def _on_unexpected(request: Request, error: Exception) -> JSONResponse:
    # The route template, never the path: paths carry user and item ids.
    route = getattr(request.scope.get("route"), "path_format", None) or "unmatched route"
    logger.exception("unhandled error on %s %s", request.method, route)
    return error_response(500, "internal_error", "an internal error occurred; it was logged")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(InvalidInput, _on_invalid_input)
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(UnknownUser, _on_unknown_user)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    # Connection-level failures (server down, connection cut, pool exhausted) are outages.
    app.add_exception_handler(sa_exc.OperationalError, _on_database)
    app.add_exception_handler(sa_exc.InterfaceError, _on_database)
    app.add_exception_handler(sa_exc.TimeoutError, _on_database)
    app.add_exception_handler(Exception, _on_unexpected)
