"""Drift webhooks: each drift record a worker commits is POSTed, signed, to one URL.

The request side only notes record ids: `DriftWebhook.submit` (called after a commit, see
`app.services.operations`) puts them in a bounded queue and returns at once; a full queue drops
them (counted). One background thread per worker reads each record back (one erased since is
skipped: nothing to tell), POSTs it and retries with a doubling wait; a receiver that is down
or slow makes the backlog fill and records drop, never a request wait.

What the receiver gets (one record per POST):

    POST <DRIFTREC_DRIFT_WEBHOOK_URL>
    Content-Type: application/json
    X-DriftRec-Event: drift.detected
    X-DriftRec-Delivery: <record id>        (the same on every try: deduplicate by it)
    X-DriftRec-Timestamp: <unix seconds>    (when this try was signed)
    X-DriftRec-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>

    {"type": "drift.detected", "record": {<GET /drift/history's record>}}

A receiver recomputes the HMAC over the timestamp, a dot and the raw body, compares in constant
time, and refuses timestamps more than a few minutes off its clock (a captured request cannot be
replayed later). `driftrec_client.webhooks.verify` does it. Any 2xx is delivered; anything else
(or no answer within the timeout) is retried, up to `attempts` tries in all.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.schemas.serving import DriftRecordOut
from app.store.models import DriftRecord

logger = logging.getLogger("driftrec.webhooks")

EVENT = "drift.detected"
FIRST_WAIT_SECONDS = 1.0  # before the second try; doubled after each failed one
MAX_WAIT_SECONDS = 60.0


class WebhookObserver(Protocol):
    """What the sender reports (app.core.metrics.Metrics through an adapter)."""

    def outcome(self, outcome: str, count: int = 1) -> None: ...

    def retried(self) -> None: ...

    def depth(self, depth: int) -> None: ...


class _Unobserved:
    def outcome(self, outcome: str, count: int = 1) -> None:
        pass

    def retried(self) -> None:
        pass

    def depth(self, depth: int) -> None:
        pass


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256 under the secret over `timestamp.body`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


class DriftWebhook:
    def __init__(self, factory: sessionmaker[Session], url: str, secret: str, *,
                 queue_size: int = 1_000, attempts: int = 5, timeout_seconds: float = 5.0,
                 observer: WebhookObserver | None = None,
                 first_wait_seconds: float = FIRST_WAIT_SECONDS,
                 transport: httpx.BaseTransport | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._factory = factory
        self.url = url
        self._secret = secret
        self.attempts = max(1, attempts)
        self.first_wait_seconds = first_wait_seconds
        self._observer: WebhookObserver = observer or _Unobserved()
        self._clock = clock
        self._queue: queue.Queue[int] = queue.Queue(maxsize=queue_size)
        self._http = httpx.Client(timeout=timeout_seconds, transport=transport,
                                  follow_redirects=False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the request side
    def submit(self, record_ids: Sequence[int]) -> int:
        """Queue committed records for sending; never waits. How many were queued (the rest
        dropped: the backlog is full)."""
        queued = 0
        for record_id in record_ids:
            try:
                self._queue.put_nowait(record_id)
                queued += 1
            except queue.Full:
                break
        if queued < len(record_ids):
            dropped = len(record_ids) - queued
            logger.warning("drift webhook backlog full: %d record(s) dropped", dropped)
            self._observer.outcome("dropped", dropped)
        self._observer.depth(self._queue.qsize())
        return queued

    # ------------------------------------------------------------------ the sender
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="drift-webhook", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the try in flight; what is still queued is dropped (counted)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        left = 0
        while True:
            try:
                self._queue.get_nowait()
                left += 1
            except queue.Empty:
                break
        if left:
            self._observer.outcome("dropped", left)
        self._observer.depth(0)
        self._http.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                record_id = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                body = self._body(record_id)
                if body is not None:
                    self._deliver(record_id, body)
            except Exception:  # the sender must outlive a bad record or a database outage
                logger.exception("drift webhook: record %d not sent", record_id)
                self._observer.outcome("failed")
            finally:
                self._observer.depth(self._queue.qsize())

    def _body(self, record_id: int) -> bytes | None:
        with self._factory() as session:
            record = session.scalar(select(DriftRecord).where(DriftRecord.id == record_id))
            if record is None:  # the user was erased meanwhile
                return None
            payload = DriftRecordOut.model_validate(record).model_dump(mode="json")
        return json.dumps({"type": EVENT, "record": payload}, separators=(",", ":"),
                          sort_keys=True).encode()

    def _deliver(self, record_id: int, body: bytes) -> None:
        wait = self.first_wait_seconds
        for attempt in range(1, self.attempts + 1):
            timestamp = str(int(self._clock()))
            headers = {"Content-Type": "application/json", "X-DriftRec-Event": EVENT,
                       "X-DriftRec-Delivery": str(record_id),
                       "X-DriftRec-Timestamp": timestamp,
                       "X-DriftRec-Signature": signature(self._secret, timestamp, body)}
            try:
                response = self._http.post(self.url, content=body, headers=headers)
                if response.is_success:
                    self._observer.outcome("delivered")
                    return
                reason = f"HTTP {response.status_code}"
            except httpx.HTTPError as error:
                reason = type(error).__name__
            if attempt == self.attempts or self._stop.is_set():
                logger.warning("drift webhook: record %d not delivered after %d tries (%s)",
                               record_id, attempt, reason)
                self._observer.outcome("failed")
                return
            self._observer.retried()
            if self._stop.wait(wait):
                self._observer.outcome("dropped")
                return
            wait = min(wait * 2, MAX_WAIT_SECONDS)
