"""Prometheus metrics of the service, exposed at `GET /metrics`.

Each app gets its own `Metrics` (its own `CollectorRegistry`), so tests that build many apps
in one process neither collide on metric names nor see each other's counts.

Multi-worker (`python -m app serve --workers N`): with `PROMETHEUS_MULTIPROC_DIR` set, every
worker writes its values to files in that directory and a scrape, whichever worker answers it,
reads them all (prometheus_client's multiprocess mode): counters and histograms are summed
over workers, `driftrec_model_info` has one series per live worker (`pid` label). The
directory must exist and be empty at start; `python -m app serve` empties it.

Labels are bounded: `route` is the route template (`/recommend/{user_id}`, `unmatched` when no
route matched), `method` one of the HTTP methods or `other`, `status` the response code.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from functools import lru_cache
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    multiprocess,
)
from prometheus_client.exposition import choose_encoder
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# 1 ms .. 10 s: a cached recommendation takes a few ms, a cold drift check over 200 events or a
# 10,000-event batch takes seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"

# No `*_created` series beside every counter and histogram: they double the output and
# Prometheus does not need them (process-wide switch of prometheus_client).
disable_created_metrics()


class ServedModelInfo(Protocol):
    name: str
    version: str
    device: str


class ObservedManager(Protocol):
    """What the metrics read from `app.services.model_manager.ModelManager`."""

    @property
    def loaded(self) -> ServedModelInfo | None: ...

    reload_failures: int


def multiprocess_dir() -> str | None:
    # prometheus_client also still honours the older lower-case name
    return os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower()) or None


class Metrics:
    """The metric objects of one app (of one process in multiprocess mode; see new_metrics)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "driftrec_http_requests", "HTTP requests answered.",
            ["method", "route", "status"], registry=registry)
        self.latency = Histogram(
            "driftrec_http_request_duration_seconds",
            "Time from receiving a request to the end of its response.",
            ["method", "route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.model_info = Gauge(
            "driftrec_model_info", "The served model version (1; absent while none is loaded).",
            ["name", "version", "device"], multiprocess_mode="liveall", registry=registry)
        self.reload_failures = Counter(
            "driftrec_model_reload_failures",
            "Model versions refused (download, load or smoke test failed); the old one served on.",
            registry=registry)
        self.events_ingested = Counter(
            "driftrec_events_ingested", "Events stored (new event ids, committed).",
            registry=registry)
        self.events_duplicate = Counter(
            "driftrec_events_duplicate",
            "Events received again (event id already stored) and not stored twice.",
            registry=registry)
        self.drifts_detected = Counter(
            "driftrec_drifts_detected", "Drift records created (new change points, committed).",
            registry=registry)
        self.inference_batch = Histogram(
            "driftrec_inference_batch_size",
            "Histories per batched forward pass (concurrent requests share one).",
            ["kind"], buckets=BATCH_BUCKETS, registry=registry)
        self.drift_queue_depth = Gauge(
            "driftrec_drift_queue_depth", "Drift checks waiting in the background queue.",
            multiprocess_mode="livesum", registry=registry)
        self.drift_checks = Counter(
            "driftrec_drift_checks", "Background drift checks by outcome "
            "(done, failed, dropped: the queue was full).", ["outcome"], registry=registry)
        self.catalogue_pending = Gauge(
            "driftrec_catalogue_pending_items",
            "Items written but not yet embedded into the served catalogue.",
            multiprocess_mode="livesum", registry=registry)
        self.catalogue_embedded = Counter(
            "driftrec_catalogue_items_embedded",
            "Items embedded (new) or re-embedded (changed) into the served catalogue.",
            registry=registry)
        self.catalogue_batch = Histogram(
            "driftrec_catalogue_embed_batch_size", "Items per catalogue embedding batch.",
            buckets=BATCH_BUCKETS, registry=registry)
        self.catalogue_failures = Counter(
            "driftrec_catalogue_refresh_failures",
            "Catalogue refresh batches that failed (retried with the next change).",
            registry=registry)
        # Champion and challenger (README "Champion and challenger").
        self.challenger_info = Gauge(
            "driftrec_challenger_info",
            "The challenger version served to its share of users (1; absent while none is).",
            ["name", "version", "device"], multiprocess_mode="liveall", registry=registry)
        self.challenger_serving = Gauge(
            "driftrec_challenger_serving",
            "1 while a challenger is served to its share, 0 while it is enabled but missing or "
            "refused (its users get the champion).", multiprocess_mode="liveall",
            registry=registry)
        self.challenger_reload_failures = Counter(
            "driftrec_challenger_reload_failures",
            "Challenger versions refused (download, load or smoke test failed).",
            registry=registry)
        self.recommendations = Counter(
            "driftrec_recommendations",
            "Recommendation responses by the role of the version that ranked them.",
            ["role"], registry=registry)
        self.impressions_written = Counter(
            "driftrec_impressions_written", "Impressions stored (committed).",
            registry=registry)
        self.impressions_dropped = Counter(
            "driftrec_impressions_dropped",
            "Impressions not stored, by reason (queue_full: the writer could not keep up; "
            "write_failed: the database refused the batch twice; unknown_user: the user was "
            "erased meanwhile).", ["reason"], registry=registry)
        self.impression_queue_depth = Gauge(
            "driftrec_impression_queue_depth", "Impressions waiting to be written.",
            multiprocess_mode="livesum", registry=registry)
        # Drift checks logged by any path (request, background queue), counted at commit: the
        # denominator of the drift rate that the drift-wave alert watches.
        self.drift_checks_logged = Counter(
            "driftrec_drift_checks_logged",
            "Drift checks logged (committed), whichever path made them.", registry=registry)
        self.webhook_deliveries = Counter(
            "driftrec_webhook_deliveries",
            "Drift webhook deliveries by outcome (delivered; failed: every try refused or "
            "unanswered; dropped: the backlog was full or the worker stopped).", ["outcome"],
            registry=registry)
        self.webhook_retries = Counter(
            "driftrec_webhook_retries", "Drift webhook tries that failed and were retried.",
            registry=registry)
        self.webhook_queue_depth = Gauge(
            "driftrec_webhook_queue_depth", "Drift records waiting to be sent to the webhook.",
            multiprocess_mode="livesum", registry=registry)
        # Online hit rate@k per role over a trailing window (app.services.operations), for the
        # challenger alert; every worker computes the same numbers from the store.
        self.online_impressions = Gauge(
            "driftrec_online_impressions",
            "Impressions whose outcome is known, per role, in the online-metrics window.",
            ["role"], multiprocess_mode="max", registry=registry)
        self.online_hit_rate = Gauge(
            "driftrec_online_hit_rate", "Online hit rate@k per role in the window.",
            ["role"], multiprocess_mode="max", registry=registry)
        self.online_hit_rate_low = Gauge(
            "driftrec_online_hit_rate_low",
            "Lower end of the online hit rate's 95 % (Wilson) interval per role.",
            ["role"], multiprocess_mode="max", registry=registry)
        self.online_hit_rate_high = Gauge(
            "driftrec_online_hit_rate_high",
            "Upper end of the online hit rate's 95 % (Wilson) interval per role.",
            ["role"], multiprocess_mode="max", registry=registry)
        if multiprocess_dir() is None:
            # Process metrics (CPU, memory, open files) are per process: not in multiprocess mode.
            ProcessCollector(registry=registry)
        self._model_lock = threading.Lock()
        self._model_labels: tuple[str, str, str] | None = None
        self._failures_seen = 0
        self._challenger_labels: tuple[str, str, str] | None = None
        self._challenger_failures_seen = 0

    # ------------------------------------------------------------------ recording
    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "other"
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def count_events(self, accepted: int, duplicates: int) -> None:
        """After a batch commits: `accepted` new events, `duplicates` already stored."""
        self.events_ingested.inc(accepted)
        self.events_duplicate.inc(duplicates)

    def observe_batch(self, kind: str, size: int) -> None:
        self.inference_batch.labels(kind).observe(size)

    def observe_model(self, manager: ObservedManager) -> None:
        """After a reload attempt: the served version and the failures so far."""
        with self._model_lock:
            failures = manager.reload_failures
            if failures > self._failures_seen:
                self.reload_failures.inc(failures - self._failures_seen)
                self._failures_seen = failures
            served = manager.loaded
            labels = None if served is None else (served.name, served.version, served.device)
            if labels == self._model_labels:
                return
            if self._model_labels is not None:
                if multiprocess_dir() is None:
                    self.model_info.remove(*self._model_labels)
                else:  # series cannot be removed from the value files: 0 = no longer served
                    self.model_info.labels(*self._model_labels).set(0)
            if labels is not None:
                self.model_info.labels(*labels).set(1)
            self._model_labels = labels

    def observe_challenger(self, served: ServedModelInfo | None, failures: int) -> None:
        """After a challenger reload attempt: the version served to its share (None: none,
        its users get the champion) and the challenger's refusals so far."""
        with self._model_lock:
            if failures > self._challenger_failures_seen:
                self.challenger_reload_failures.inc(failures - self._challenger_failures_seen)
                self._challenger_failures_seen = failures
            self.challenger_serving.set(0 if served is None else 1)
            labels = None if served is None else (served.name, served.version, served.device)
            if labels == self._challenger_labels:
                return
            if self._challenger_labels is not None:
                if multiprocess_dir() is None:
                    self.challenger_info.remove(*self._challenger_labels)
                else:
                    self.challenger_info.labels(*self._challenger_labels).set(0)
            if labels is not None:
                self.challenger_info.labels(*labels).set(1)
            self._challenger_labels = labels

    def count_committed_drifts(self, factory: sessionmaker[Session],
                               take_created: Callable[[Session], int],
                               forget_created: Callable[[Session], None]) -> None:
        """Count the drift records that sessions of `factory` create, when they commit.

        The store notes each new record on the session (`app.store.drift_records`:
        `take_new_records` pops the count, `forget_new_records` drops it); a rollback
        discards the note, so a record counts only once it is stored."""

        def on_commit(session: Session) -> None:
            if session.in_nested_transaction():  # a savepoint: the outer one may roll back
                return
            created = take_created(session)
            if created:
                self.drifts_detected.inc(created)

        def on_end(session: Session, transaction: object) -> None:
            # Fires after after_commit, and alone on rollback: what is left was not committed.
            if getattr(transaction, "parent", None) is None:
                forget_created(session)

        event.listen(factory, "after_commit", on_commit)
        event.listen(factory, "after_transaction_end", on_end)

    # ------------------------------------------------------------------ exposition
    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The metrics in the format the scraper asked for (`Accept`), and its content type."""
        encode, content_type = choose_encoder(accept)
        if multiprocess_dir() is None:
            return encode(self.registry), content_type
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return encode(registry), content_type

    def process_exiting(self) -> None:
        """Drop this worker's `driftrec_model_info` series (multiprocess mode)."""
        if multiprocess_dir() is not None:
            multiprocess.mark_process_dead(os.getpid())


@lru_cache
def _process_metrics(pid: int) -> Metrics:
    return Metrics()


def new_metrics() -> Metrics:
    """Metrics for a new app: its own, or in multiprocess mode the process's one (the values
    live in files keyed by metric name; two objects of one name in a process would overwrite
    each other's counts)."""
    if multiprocess_dir() is None:
        return Metrics()
    return _process_metrics(os.getpid())


def empty_multiprocess_dir() -> None:
    """Remove the previous run's value files (start of `serve`, before any worker starts)."""
    directory = multiprocess_dir()
    if directory is None:
        return
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if name.endswith(".db"):
            os.remove(os.path.join(directory, name))

