"""`DriftRecClient` (blocking) and `AsyncDriftRecClient`: the same methods, on httpx.

Either is built from a base URL (it then owns its httpx client: use it as a context manager
or call `close`), or around an httpx client of the caller's (`http=`: its base URL, pool and
timeouts are used; FastAPI's TestClient is one), or on an httpx transport (`transport=`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
import httpx

from app.schemas.lifecycle import ErasureOut, SimilarItemsOut
from app.schemas.serving import (
    DriftHistoryOut,
    DriftOut,
    DriftRecordOut,
    InterestProfileOut,
    RecommendationsOut,
    RecommendRequest,
)
from driftrec_client import _calls
from driftrec_client._calls import (
    DEFAULT_BATCH_SIZE,
    Call,
    DriftKind,
    EventLike,
    IngestSummary,
    ItemLike,
    Retry,
    TimeLike,
)
from driftrec_client.errors import DriftRecError

T = TypeVar("T")
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


class _Base:
    def __init__(self, base_url: str | None, api_key: str | None, retry: Retry,
                 batch_size: int, headers: Mapping[str, str] | None) -> None:
        self._base_url = base_url
        self._headers = dict(headers or {})
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self.retry = retry
        self.batch_size = batch_size

    @staticmethod
    def _history_call(user_id: str | None, since: TimeLike | None, until: TimeLike | None,
                      kind: DriftKind | None, limit: int, cursor: str | None
                      ) -> Call[DriftHistoryOut]:
        return _calls.drift_history_page(user_id=user_id, since=since, until=until, kind=kind,
                                         limit=limit, cursor=cursor)

    @staticmethod
    def _session_request(recent_item_ids: Sequence[str], timestamps: Sequence[TimeLike] | None,
                         k: int, exclude_seen: bool, drift_aware: bool, user_id: str | None,
                         at: TimeLike | None) -> dict[str, Any]:
        body: dict[str, Any] = {"recent_item_ids": list(recent_item_ids), "k": k,
                                "exclude_seen": exclude_seen, "drift_aware": drift_aware}
        if timestamps is not None:
            body["timestamps"] = list(timestamps)
        if user_id is not None:
            body["user_id"] = user_id
        if at is not None:
            body["at"] = at
        return body


class DriftRecClient(_Base):
    """The DriftRec API, blocking. Thread-safe as httpx.Client is."""

    def __init__(self, base_url: str | None = None, *, api_key: str | None = None,
                 http: httpx.Client | None = None, transport: httpx.BaseTransport | None = None,
                 timeout: httpx.Timeout | float = DEFAULT_TIMEOUT, retry: Retry = Retry(),
                 batch_size: int = DEFAULT_BATCH_SIZE,
                 headers: Mapping[str, str] | None = None) -> None:
        if http is None and base_url is None and transport is None:
            raise ValueError("give base_url, http or transport")
        self._owned = http is None
        # with a transport alone, relative paths need some base URL: the transport ignores it
        self._http = http or httpx.Client(base_url=base_url or "http://driftrec",
                                          transport=transport, timeout=timeout)
        super().__init__(base_url if http is not None else None, api_key, retry, batch_size,
                         headers)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the httpx client if this made it (one passed in stays the caller's)."""
        if self._owned:
            self._http.close()

    def send(self, call: Call[T]) -> T:
        """One call with the retry rule: its answer, or the API's error as an exception."""
        attempt = 0
        while True:
            attempt += 1
            response: httpx.Response | None = None
            try:
                response = self._http.send(call.request(self._http, self._base_url,
                                                        self._headers))
                response.read()
            except httpx.TransportError as error:
                wait = self.retry.wait(attempt, call, error, None)
                if wait is None:
                    raise _calls.connection_failed(error) from error
            else:
                wait = self.retry.wait(attempt, call, None, response)
                if wait is None:
                    return _calls.read(call, response)
            time.sleep(wait)

    # ------------------------------------------------------------------ writes
    def upsert_items(self, items: Iterable[ItemLike], *, batch_size: int | None = None) -> int:
        """Insert or update items in batches (upserts by item_id: resending one is harmless);
        the number upserted. An InvalidRequest names rows counted from the start of `items`;
        the batches before it are stored."""
        upserted = 0
        for start, batch in _calls.batches(items, batch_size or self.batch_size):
            try:
                upserted += self.send(_calls.upsert_items(batch)).upserted
            except DriftRecError as error:
                raise error.shifted(start) from error.__cause__
        return upserted

    def ingest_events(self, events: Iterable[EventLike], *, detect_drift: bool = False,
                      batch_size: int | None = None) -> IngestSummary:
        """Store events in batches, each atomic and retried safely (a resent event_id is a
        duplicate, never stored twice; an event without one gets one derived from its
        content). An InvalidRequest names rows counted from the start of `events`; the batches
        before it are stored, nothing of its own batch is."""
        summary = IngestSummary()
        for start, batch in _calls.batches(events, batch_size or self.batch_size):
            try:
                summary.add(self.send(_calls.post_events(batch, detect_drift)), start)
            except DriftRecError as error:
                raise error.shifted(start) from error.__cause__
        return summary

    def erase_user(self, user_id: str) -> ErasureOut:
        """Delete everything stored about the user (admin key); NotFound when unknown."""
        return self.send(_calls.erase_user(user_id))

    # ------------------------------------------------------------------ reads
    def interest_profile(self, user_id: str) -> InterestProfileOut:
        return self.send(_calls.interest_profile(user_id))

    def drift(self, user_id: str) -> DriftOut:
        """Check the user for drift now (a change point found is recorded once)."""
        return self.send(_calls.drift(user_id))

    def drift_history_page(self, *, user_id: str | None = None, since: TimeLike | None = None,
                           until: TimeLike | None = None, kind: DriftKind | None = None,
                           limit: int = 50, cursor: str | None = None) -> DriftHistoryOut:
        return self.send(self._history_call(user_id, since, until, kind, limit, cursor))

    def drift_history(self, *, user_id: str | None = None, since: TimeLike | None = None,
                      until: TimeLike | None = None, kind: DriftKind | None = None,
                      page_size: int = 100) -> Iterator[DriftRecordOut]:
        """Every matching drift record, newest first, fetched a page at a time (following
        next_cursor; keyset paging, so records added meanwhile neither repeat nor shift)."""
        cursor: str | None = None
        while True:
            page = self.drift_history_page(user_id=user_id, since=since, until=until,
                                           kind=kind, limit=page_size, cursor=cursor)
            yield from page.records
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def recommend(self, user_id: str, *, k: int = 10, exclude_seen: bool = True,
                  drift_aware: bool = True, at: TimeLike | None = None,
                  impression: bool = True) -> RecommendationsOut:
        return self.send(_calls.recommend(user_id, k=k, exclude_seen=exclude_seen,
                                          drift_aware=drift_aware, at=at,
                                          impression=impression))

    def recommend_for_items(self, recent_item_ids: Sequence[str], *,
                            timestamps: Sequence[TimeLike] | None = None, k: int = 10,
                            exclude_seen: bool = True, drift_aware: bool = True,
                            user_id: str | None = None, at: TimeLike | None = None
                            ) -> RecommendationsOut:
        """`POST /recommend`: for a session's items (oldest first), no stored user needed."""
        return self.send(_calls.recommend_for_items(self._session_request(
            recent_item_ids, timestamps, k, exclude_seen, drift_aware, user_id, at)))

    def recommend_request(self, request: RecommendRequest) -> RecommendationsOut:
        return self.send(_calls.recommend_for_items(request))

    def similar_items(self, item_id: str, *, k: int = 10) -> SimilarItemsOut:
        return self.send(_calls.similar_items(item_id, k))


class AsyncDriftRecClient(_Base):
    """The DriftRec API for asyncio (or trio): the methods of DriftRecClient, awaited."""

    def __init__(self, base_url: str | None = None, *, api_key: str | None = None,
                 http: httpx.AsyncClient | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 timeout: httpx.Timeout | float = DEFAULT_TIMEOUT, retry: Retry = Retry(),
                 batch_size: int = DEFAULT_BATCH_SIZE,
                 headers: Mapping[str, str] | None = None) -> None:
        if http is None and base_url is None and transport is None:
            raise ValueError("give base_url, http or transport")
        self._owned = http is None
        self._http = http or httpx.AsyncClient(base_url=base_url or "http://driftrec",
                                               transport=transport, timeout=timeout)
        super().__init__(base_url if http is not None else None, api_key, retry, batch_size,
                         headers)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owned:
            await self._http.aclose()

    async def send(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.send(call.request(self._http, self._base_url,
                                                              self._headers))
                await response.aread()
            except httpx.TransportError as error:
                wait = self.retry.wait(attempt, call, error, None)
                if wait is None:
                    raise _calls.connection_failed(error) from error
            else:
                wait = self.retry.wait(attempt, call, None, response)
                if wait is None:
                    return _calls.read(call, response)
            await anyio.sleep(wait)

    async def upsert_items(self, items: Iterable[ItemLike], *,
                           batch_size: int | None = None) -> int:
        upserted = 0
        for start, batch in _calls.batches(items, batch_size or self.batch_size):
            try:
                upserted += (await self.send(_calls.upsert_items(batch))).upserted
            except DriftRecError as error:
                raise error.shifted(start) from error.__cause__
        return upserted

    async def ingest_events(self, events: Iterable[EventLike], *, detect_drift: bool = False,
                            batch_size: int | None = None) -> IngestSummary:
        summary = IngestSummary()
        for start, batch in _calls.batches(events, batch_size or self.batch_size):
            try:
                summary.add(await self.send(_calls.post_events(batch, detect_drift)), start)
            except DriftRecError as error:
                raise error.shifted(start) from error.__cause__
        return summary

    async def erase_user(self, user_id: str) -> ErasureOut:
        return await self.send(_calls.erase_user(user_id))

    async def interest_profile(self, user_id: str) -> InterestProfileOut:
        return await self.send(_calls.interest_profile(user_id))

    async def drift(self, user_id: str) -> DriftOut:
        return await self.send(_calls.drift(user_id))

    async def drift_history_page(self, *, user_id: str | None = None,
                                 since: TimeLike | None = None, until: TimeLike | None = None,
                                 kind: DriftKind | None = None, limit: int = 50,
                                 cursor: str | None = None) -> DriftHistoryOut:
        return await self.send(self._history_call(user_id, since, until, kind, limit, cursor))

    async def drift_history(self, *, user_id: str | None = None,
                            since: TimeLike | None = None, until: TimeLike | None = None,
                            kind: DriftKind | None = None, page_size: int = 100
                            ) -> AsyncIterator[DriftRecordOut]:
        cursor: str | None = None
        while True:
            page = await self.drift_history_page(user_id=user_id, since=since, until=until,
                                                 kind=kind, limit=page_size, cursor=cursor)
            for record in page.records:
                yield record
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def recommend(self, user_id: str, *, k: int = 10, exclude_seen: bool = True,
                        drift_aware: bool = True, at: TimeLike | None = None,
                        impression: bool = True) -> RecommendationsOut:
        return await self.send(_calls.recommend(user_id, k=k, exclude_seen=exclude_seen,
                                                drift_aware=drift_aware, at=at,
                                                impression=impression))

    async def recommend_for_items(self, recent_item_ids: Sequence[str], *,
                                  timestamps: Sequence[TimeLike] | None = None, k: int = 10,
                                  exclude_seen: bool = True, drift_aware: bool = True,
                                  user_id: str | None = None, at: TimeLike | None = None
                                  ) -> RecommendationsOut:
        return await self.send(_calls.recommend_for_items(self._session_request(
            recent_item_ids, timestamps, k, exclude_seen, drift_aware, user_id, at)))

    async def recommend_request(self, request: RecommendRequest) -> RecommendationsOut:
        return await self.send(_calls.recommend_for_items(request))

    async def similar_items(self, item_id: str, *, k: int = 10) -> SimilarItemsOut:
        return await self.send(_calls.similar_items(item_id, k))
