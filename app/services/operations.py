"""What operators watch beyond the request metrics, started with the serving runtime:

- drift checks counted at commit, whichever path logged them (`driftrec_drift_checks_logged`:
  the denominator of the drift rate the drift-wave alert follows);
- the drift webhook (`app.services.webhooks`), fed the ids of the drift records each commit
  created, when `DRIFTREC_DRIFT_WEBHOOK_URL` is set;
- the online hit rate per role as gauges (`driftrec_online_hit_rate*`), recomputed in the
  background while a challenger is enabled, for the alert on a challenger doing worse than
  the champion.

`start(runtime)` sets all of it up and returns what `stop()` ends; it is called at the end of
`ServingRuntime.start` (and `stop()` first thing in `ServingRuntime.stop`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.core.metrics import Metrics
from app.schemas.serving import OnlineMetricsOut
from app.services.webhooks import DriftWebhook
from app.store import drift_records

logger = logging.getLogger("driftrec.operations")


class ServingRuntimeView(Protocol):
    """What this module reads of `app.services.runtime.ServingRuntime`."""

    settings: Settings
    metrics: Metrics
    session_factory: sessionmaker[Session]

    def online_metrics(self, *, since: datetime | None, until: datetime | None, k: int,
                       bucket: Literal["hour", "day", "week"]) -> OnlineMetricsOut: ...

    def challenger_state(self) -> str | None: ...


class _WebhookMetrics:
    """The webhook sender's counts as Prometheus metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def outcome(self, outcome: str, count: int = 1) -> None:
        self._metrics.webhook_deliveries.labels(outcome).inc(count)

    def retried(self) -> None:
        self._metrics.webhook_retries.inc()

    def depth(self, depth: int) -> None:
        self._metrics.webhook_queue_depth.set(depth)


def listen_for_commits(factory: sessionmaker[Session], metrics: Metrics,
                       webhook: DriftWebhook | None) -> None:
    """After each commit of a session of `factory`: count its drift checks, hand its new
    drift records to the webhook. A rollback discards both notes (the metrics' own listener,
    `Metrics.count_committed_drifts`, drops them; this one drops them too, for a factory
    without it)."""

    def on_commit(session: Session) -> None:
        if session.in_nested_transaction():  # a savepoint: the outer one may roll back
            return
        checks = drift_records.take_new_checks(session)
        if checks:
            metrics.drift_checks_logged.inc(checks)
        created = drift_records.take_new_record_ids(session)
        if created and webhook is not None:
            webhook.submit(created)  # a queue put: never waits on the receiver

    def on_end(session: Session, transaction: object) -> None:
        if getattr(transaction, "parent", None) is None:
            drift_records.forget_new_records(session)

    event.listen(factory, "after_commit", on_commit)
    event.listen(factory, "after_transaction_end", on_end)


class OnlineGauges:
    """Recomputes the online hit rate per role every `seconds` into the metrics' gauges,
    while a challenger is enabled (with none there is nothing to compare)."""

    def __init__(self, runtime: ServingRuntimeView, seconds: float, window_seconds: float,
                 k: int) -> None:
        self._runtime = runtime
        self.seconds = seconds
        self.window = timedelta(seconds=window_seconds)
        self.k = k
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="online-gauges", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.seconds):
            try:
                self.refresh()
            except Exception:  # a database outage: try again next round
                logger.exception("online hit-rate gauges not refreshed")

    def refresh(self, now: datetime | None = None) -> None:
        metrics = self._runtime.metrics
        if self._runtime.challenger_state() is None:
            return
        now = now or datetime.now(UTC)
        report = self._runtime.online_metrics(since=now - self.window, until=None, k=self.k,
                                              bucket="day")
        for version in report.versions:
            if version.role is None:  # a version no longer served
                continue
            role = version.role
            metrics.online_impressions.labels(role).set(version.impressions)
            if version.hit_rate is not None:
                metrics.online_hit_rate.labels(role).set(version.hit_rate)
            if version.hit_rate_ci is not None:
                metrics.online_hit_rate_low.labels(role).set(version.hit_rate_ci.low)
                metrics.online_hit_rate_high.labels(role).set(version.hit_rate_ci.high)


@dataclass
class Operations:
    webhook: DriftWebhook | None
    gauges: OnlineGauges | None

    def stop(self) -> None:
        if self.gauges is not None:
            self.gauges.stop()
        if self.webhook is not None:
            self.webhook.stop()


def start(runtime: ServingRuntimeView) -> Operations:
    """Set up the commit listener, the webhook sender and the online gauges of a runtime."""
    settings, metrics = runtime.settings, runtime.metrics
    webhook = None
    if settings.drift_webhook_url:
        webhook = DriftWebhook(
            runtime.session_factory, settings.drift_webhook_url,
            settings.drift_webhook_secret, queue_size=settings.drift_webhook_queue_size,
            attempts=settings.drift_webhook_attempts,
            timeout_seconds=settings.drift_webhook_timeout_seconds,
            observer=_WebhookMetrics(metrics))
        webhook.start()
    listen_for_commits(runtime.session_factory, metrics, webhook)
    gauges = None
    if settings.online_gauge_seconds > 0:
        gauges = OnlineGauges(runtime, settings.online_gauge_seconds,
                              settings.online_gauge_window_seconds, settings.online_gauge_k)
        gauges.start()
    return Operations(webhook, gauges)
