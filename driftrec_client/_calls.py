"""What the sync and the async client share: each endpoint as a `Call` (method, path, query,
body, how to read the answer, whether resending it is harmless), the retry rule, and the
reading of an answer. No I/O here: the two clients only send the calls.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from app.schemas.events import ConflictOut, EventIn, IngestResult
from app.schemas.items import ItemIn, UpsertResult
from app.schemas.lifecycle import ErasureOut, SimilarItemsOut
from app.schemas.serving import (
    DriftHistoryOut,
    DriftOut,
    InterestProfileOut,
    RecommendationsOut,
    RecommendRequest,
)
from driftrec_client.errors import DriftRecError, error_from_response

T = TypeVar("T")
ModelT = TypeVar("ModelT", bound=BaseModel)
# What a caller may pass for a row of a batch: the API's own model, or its JSON as a mapping
# (validated by the service: a bad row comes back as an InvalidRequest naming it).
EventLike = EventIn | Mapping[str, Any]
ItemLike = ItemIn | Mapping[str, Any]
TimeLike = datetime | float | int | str
DriftKind = Literal["abrupt", "gradual", "recurring"]

DEFAULT_BATCH_SIZE = 1_000  # rows per POST; the service takes up to 10,000 (its setting)


@dataclass(frozen=True, slots=True)
class Retry:
    """When and how long to retry.

    `attempts` tries in all. A failed connection (nothing was sent), 429 and 503 (the service
    wrote nothing: database down, no model loaded) are retried for every call; a lost answer
    (read timeout, dropped connection) and a proxy's 502/504 only for calls that are harmless
    to resend: writes that the API deduplicates (events by `event_id`, items by `item_id`) and
    reads without side effects. Recommendations record an impression and an erasure answers
    404 the second time, so those are not resent once they may have arrived. The wait doubles
    from `backoff` (with jitter, at most `max_backoff`), or is the answer's Retry-After.
    """

    attempts: int = 4
    backoff: float = 0.25
    max_backoff: float = 8.0

    def wait(self, attempt: int, call: Call[Any], error: Exception | None,
             response: httpx.Response | None) -> float | None:
        """Seconds to wait before try `attempt + 1` (None: give up) after try `attempt`."""
        if attempt >= self.attempts:
            return None
        if error is not None:
            unsent = isinstance(error, httpx.ConnectError | httpx.ConnectTimeout |
                                httpx.PoolTimeout)
            if not (unsent or (call.resendable and isinstance(error, httpx.TransportError))):
                return None
        elif response is not None:
            status = response.status_code
            if not (status in (429, 503) or (call.resendable and status in (502, 504))):
                return None
            after = _retry_after(response)
            if after is not None:
                return min(after, self.max_backoff)
        step = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
        return random.uniform(step / 2, step)


NO_RETRY = Retry(attempts=1)


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Any], T]
    params: Mapping[str, Any] = field(default_factory=dict)
    body: Any = None
    resendable: bool = True

    def request(self, client: httpx.Client | httpx.AsyncClient, base_url: str | None,
                headers: Mapping[str, str]) -> httpx.Request:
        url = self.path if base_url is None else base_url.rstrip("/") + self.path
        return client.build_request(
            self.method, url, params={k: _query_value(v) for k, v in self.params.items()
                                      if v is not None},
            json=self.body, headers=dict(headers))


def read(call: Call[T], response: httpx.Response) -> T:
    """The answer as the call's type, or the API's error as an exception."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    if response.is_success:
        return call.parse(body)
    raise error_from_response(response.status_code, body, response.headers.get("x-request-id"),
                              _retry_after(response))


def connection_failed(error: Exception) -> DriftRecError:
    from driftrec_client.errors import ConnectionFailed

    failure = ConnectionFailed(0, "connection_failed", f"no answer: {type(error).__name__}: "
                               f"{error}")
    failure.__cause__ = error
    return failure


# ---------------------------------------------------------------------------- the endpoints
def upsert_items(batch: Sequence[ItemLike]) -> Call[UpsertResult]:
    return Call("POST", "/items", _model(UpsertResult), body={"items": _rows(batch)})


def post_events(batch: Sequence[EventLike], detect_drift: bool) -> Call[IngestResult]:
    return Call("POST", "/events", _model(IngestResult), params={"detect_drift": detect_drift},
                body={"events": _rows(batch)})


def interest_profile(user_id: str) -> Call[InterestProfileOut]:
    return Call("GET", f"/interest-profile/{_segment(user_id)}", _model(InterestProfileOut))


def drift(user_id: str) -> Call[DriftOut]:
    # writes a found change point once (unique per user and change event): safe to resend
    return Call("GET", f"/drift/{_segment(user_id)}", _model(DriftOut))


def drift_history_page(*, user_id: str | None, since: TimeLike | None, until: TimeLike | None,
                       kind: DriftKind | None, limit: int, cursor: str | None
                       ) -> Call[DriftHistoryOut]:
    return Call("GET", "/drift/history", _model(DriftHistoryOut),
                params={"user_id": user_id, "since": since, "until": until, "kind": kind,
                        "limit": limit, "cursor": cursor})


def recommend(user_id: str, *, k: int, exclude_seen: bool, drift_aware: bool,
              at: TimeLike | None, impression: bool) -> Call[RecommendationsOut]:
    return Call("GET", f"/recommend/{_segment(user_id)}", _model(RecommendationsOut),
                params={"k": k, "exclude_seen": exclude_seen, "drift_aware": drift_aware,
                        "at": at, "impression": impression},
                resendable=not impression)


def recommend_for_items(request: RecommendRequest | Mapping[str, Any]
                        ) -> Call[RecommendationsOut]:
    body = _rows([request])[0]
    return Call("POST", "/recommend", _model(RecommendationsOut), body=body,
                resendable=body.get("user_id") is None)


def similar_items(item_id: str, k: int) -> Call[SimilarItemsOut]:
    return Call("GET", f"/items/{_segment(item_id)}/similar", _model(SimilarItemsOut),
                params={"k": k})


def erase_user(user_id: str) -> Call[ErasureOut]:
    return Call("DELETE", f"/users/{_segment(user_id)}", _model(ErasureOut), resendable=False)


# ---------------------------------------------------------------------------- batches
@dataclass(slots=True)
class IngestSummary:
    """What a batched ingestion stored. A batch resent after a lost answer whose first try
    had been committed counts its events as `duplicates`: they are stored once either way.
    `conflicts` rows count from the start of the caller's input."""

    accepted: int = 0
    duplicates: int = 0
    conflicts: list[ConflictOut] = field(default_factory=list)
    drift_checks_queued: int | None = None
    batches: int = 0

    def add(self, result: IngestResult, offset: int) -> None:
        self.accepted += result.accepted
        self.duplicates += result.duplicates
        self.conflicts.extend(ConflictOut(row=c.row + offset, event_id=c.event_id)
                              for c in result.conflicts or ())
        if result.drift_checks_queued is not None:
            self.drift_checks_queued = (self.drift_checks_queued or 0) + \
                result.drift_checks_queued
        self.batches += 1


def batches(rows: Iterable[T], size: int) -> Iterable[tuple[int, list[T]]]:
    """(position of the batch's first row, the batch) of at most `size` rows each."""
    if size < 1:
        raise ValueError("batch_size must be >= 1")
    batch: list[T] = []
    start = 0
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield start, batch
            start += size
            batch = []
    if batch:
        yield start, batch


# ---------------------------------------------------------------------------- helpers
def _model(model: type[ModelT]) -> Callable[[Any], ModelT]:
    return model.model_validate


def _rows(rows: Sequence[BaseModel | Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [row.model_dump(mode="json", exclude_none=True, by_alias=True)
            if isinstance(row, BaseModel) else _jsonable(row) for row in rows]


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _query_value(value: Any) -> str | int | float:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, int | float | str):
        return value
    raise TypeError(f"query value of type {type(value).__name__}")


def _segment(value: str) -> str:
    return quote(value, safe="")


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return None
