"""The exceptions the store and the services raise for the API to answer (a leaf module: it
imports nothing from the app, so `app.core.errors` maps them to responses without importing
any layer above `core`).

Every refusal of bad input is an `InvalidInput` carrying `FieldProblem`s: one helper
(`app.core.errors.validation_response`) turns them into the one 422 body of the API,
`{"error": "validation_error", "message": ..., "detail": [{loc, msg, type, row, field}]}`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One entry of a 422's `detail`: where (`loc`, and the `row`/`field` it names) and why."""

    loc: tuple[str | int, ...]
    msg: str
    type: str
    row: int | None = None
    field: str | None = None

    def as_dict(self) -> dict[str, Any]:
        names = [str(p) for p in self.loc if not isinstance(p, int) and p != "body"]
        return {"loc": list(self.loc), "msg": self.msg, "type": self.type, "row": self.row,
                "field": self.field or (names[-1] if names else "body")}


class InvalidInput(ValueError):
    """A request the API refuses with a 422; nothing of it was written."""

    def __init__(self, problems: Sequence[FieldProblem], message: str | None = None) -> None:
        self.problems = list(problems)
        super().__init__(message or "; ".join(p.msg for p in self.problems))


def query_problem(name: str, msg: str, type_: str) -> FieldProblem:
    return FieldProblem(("query", name), msg, type_, None, name)


class InvalidCursor(InvalidInput):
    """A pagination cursor that the store did not produce (or one forged out of range)."""

    def __init__(self, reason: str = "invalid cursor", parameter: str = "cursor") -> None:
        super().__init__([query_problem(parameter, reason, "invalid_cursor")],
                         f"{parameter} is not one this API returned: {reason}")


@dataclass(frozen=True, slots=True)
class RowError:
    """A problem with one row of a batch (`collection` "events" or "items")."""

    collection: str
    row: int
    field: str
    message: str
    code: str

    def problem(self) -> FieldProblem:
        return FieldProblem(("body", self.collection, self.row, self.field), self.message,
                            self.code, self.row, self.field)

    def as_dict(self) -> dict[str, Any]:
        return self.problem().as_dict()


class BatchRejected(InvalidInput):
    """The batch has invalid rows; nothing of it was written."""

    def __init__(self, errors: list[RowError]) -> None:
        super().__init__([e.problem() for e in errors], f"{len(errors)} invalid row(s)")
        self.errors = errors


class UnknownItems(InvalidInput):
    """Items neither the model nor the store knows (positions in the request's list)."""

    def __init__(self, positions: list[int], item_ids: list[str]) -> None:
        super().__init__(
            [FieldProblem(("body", "recent_item_ids", p), f"unknown item '{item}'",
                          "unknown_item", p, "recent_item_ids")
             for p, item in zip(positions, item_ids, strict=True)],
            f"unknown item(s): {', '.join(item_ids[:5])}")
        self.positions, self.item_ids = positions, item_ids


class UnknownUser(LookupError):
    """A user with no stored event (a 404 on every endpoint that names one)."""

    def __init__(self, user_id: str) -> None:
        super().__init__(f"user '{user_id}' has no events")
        self.user_id = user_id
