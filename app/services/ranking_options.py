"""What a request asks of a ranking: one typed value, which is also its cache key.

Every field of `RankingOptions` changes the ranking, so every field is part of its equality
and hash and a remembered ranking is found only under the same options: a new option added
here is in the key without anything else to change. The one exception is the request time
`at`, which is left out of the key on purpose: a remembered ranking records the request
times it holds for (`RememberedRanking.valid`), so the same ranking serves every request
time in that range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from app.core.exceptions import FieldProblem, InvalidInput
from app.schemas.serving import RankingParams

Where = Literal["query", "body"]


def check_k(k: int, max_k: int, where: Where = "query") -> None:
    """The operator's `max_k` (the schema's bound is MAX_K; a deployment may lower it)."""
    if k > max_k:
        raise InvalidInput([FieldProblem((where, "k"), f"k must be <= {max_k}",
                                         "less_than_equal", None, "k")],
                           f"k: at most {max_k} items per request")


def request_time(at: datetime | None) -> float:
    """A request's time in epoch seconds: the one it gives, else now."""
    return (at or datetime.now(UTC)).timestamp()


@dataclass(frozen=True, slots=True)
class RankingOptions:
    k: int = 10
    exclude_seen: bool = True
    drift_aware: bool = True
    # epoch seconds; not part of the key (module docstring)
    at: float = field(default=math.nan, compare=False, hash=False)

    @classmethod
    def of_request(cls, params: RankingParams, max_k: int, where: Where = "query",
                   at: float | None = None) -> RankingOptions:
        """The options a request asks for (every field of `RankingParams` this class has),
        `k` checked against the operator's limit. `at`: the request time in epoch seconds;
        None: the one the request gives, else NaN (now, when the ranking is made)."""
        check_k(params.k, max_k, where)
        given = {name: getattr(params, name) for name in cls.__dataclass_fields__
                 if name != "at"}
        if at is None:
            at = math.nan if params.at is None else params.at.timestamp()
        return cls(**given, at=at)

    def at_time(self) -> float:
        """The request time: the one given, else now."""
        return request_time(None) if math.isnan(self.at) else self.at
