"""The serving runtime: one object per app (per worker process) that owns what serving needs.

Created in the lifespan and handed to routers through `app.api.deps.RuntimeDep`, it holds
the database engine and sessions, the model manager (the served model and its caches), the
change feed and its PostgreSQL listener, the catalogue refresher, the drift queue and the
metrics, and it runs every effect that follows a commit:

- events stored: count them, forget the users' remembered answers in this process before the
  acknowledgement (other processes learn it from the NOTIFY sent with the commit), queue
  drift checks when asked;
- items upserted: forget remembered answers (titles may have changed) and hand the ids to the
  catalogue refresher, which embeds them in the background; other processes get the same
  from the NOTIFY.

The runtime is the composition root: it builds the use-case objects (`events`, `items`,
`erasure`) and wires their post-commit effects; the answers themselves come from the served
version for the user (`app.services.recommender.Recommender`). Nothing reads `app.state` but
`app.api.deps` (and `create_app`, which stores the runtime there).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.core.exceptions import UnknownUser
from app.core.metrics import Metrics
from app.schemas.serving import OnlineMetricsOut, RecommendationsOut
from app.services import operations
from app.services.catalogue_refresh import CatalogueRefresher
from app.services.catalogue_writes import CatalogueWrites
from app.services.change_feed import (
    ChangeFeed,
    PostgresChangeListener,
    SqliteDataVersionWatcher,
)
from app.services.drift_queue import DriftQueue
from app.services.event_intake import EventIntake
from app.services.impressions import ImpressionLog
from app.services.model_manager import ModelManager, Promotion, ReloadOutcome
from app.services.online_metrics import Windows, online_metrics
from app.services.recommender import Recommender
from app.services.user_erasure import UserErasure
from app.store import drift_records
from app.store.db import (
    make_engine,
    make_read_session_factory,
    make_session_factory,
    transaction,
)
from app.store.impressions import ImpressionRow

logger = logging.getLogger("driftrec")


class _QueueMetrics:
    """The drift queue's counts as Prometheus metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def depth(self, depth: int) -> None:
        self._metrics.drift_queue_depth.set(depth)

    def outcome(self, outcome: str, count: int = 1) -> None:
        self._metrics.drift_checks.labels(outcome).inc(count)


class _ImpressionMetrics:
    """The impression log's counts as Prometheus metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def written(self, count: int) -> None:
        self._metrics.impressions_written.inc(count)

    def dropped(self, reason: str, count: int) -> None:
        self._metrics.impressions_dropped.labels(reason).inc(count)

    def depth(self, depth: int) -> None:
        self._metrics.impression_queue_depth.set(depth)


def _observe_models(metrics: Metrics, manager: ModelManager) -> None:
    metrics.observe_model(manager)
    if manager.challenger is not None:
        metrics.observe_challenger(manager.challenger.served, manager.challenger.reload_failures)


Role = Literal["champion", "challenger"]


@dataclass(eq=False)
class ServingRuntime:
    settings: Settings
    metrics: Metrics
    engine: Engine
    session_factory: sessionmaker[Session]
    models: ModelManager
    change_feed: ChangeFeed
    drift_queue: DriftQueue
    catalogue: CatalogueRefresher
    listener: PostgresChangeListener | None = None
    sqlite_watcher: SqliteDataVersionWatcher | None = None
    state_queue: DriftQueue | None = None
    impressions: ImpressionLog | None = None
    # drift webhooks and the online hit-rate gauges (app.services.operations)
    operations: operations.Operations | None = None
    # the write use cases, built by `start` with their post-commit effects
    events: EventIntake = field(init=False)
    items: CatalogueWrites = field(init=False)
    erasure: UserErasure = field(init=False)

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def start(cls, settings: Settings, metrics: Metrics) -> ServingRuntime:
        """Open the engine, load the model, start the background threads."""
        engine = make_engine(settings.database_url, settings.db_statement_timeout_ms)
        factory = make_session_factory(engine)
        metrics.count_committed_drifts(factory, drift_records.take_new_records,
                                       drift_records.forget_new_records)
        feed = ChangeFeed(settings.change_feed_users)
        manager = ModelManager(settings, factory, feed=feed,
                               reads=make_read_session_factory(engine))
        manager.on_reload = lambda observed: _observe_models(metrics, observed)
        manager.observe_batch = metrics.observe_batch
        refresher = CatalogueRefresher(manager, factory, settings.catalogue_embed_batch,
                                       metrics)

        def check_user(user_id: str) -> None:
            try:
                with transaction(factory) as session:
                    manager.current.check_drift(session, user_id)
            except UnknownUser:
                pass  # erased since it was queued: nothing to check, and nothing to log

        def advance_user(user_id: str) -> None:
            manager.current.advance(user_id)

        runtime = cls(settings, metrics, engine, factory, manager, feed,
                      DriftQueue(check_user, settings.drift_queue_size, _QueueMetrics(metrics)),
                      refresher)
        if settings.interest_state_on_ingest and settings.interest_state_users > 0:
            # new events bring their users' drift states forward in the background, so the
            # next read finds them current (a read that comes first does it itself)
            runtime.state_queue = DriftQueue(advance_user, settings.drift_queue_size)
        if settings.impression_queue_size > 0:
            runtime.impressions = ImpressionLog(
                factory, settings.impression_queue_size, settings.impression_batch_size,
                settings.impression_flush_seconds, _ImpressionMetrics(metrics))
            runtime.impressions.start()
        runtime.events = EventIntake(factory, settings, metrics, feed, runtime.drift_queue,
                                     runtime.state_queue)
        runtime.events.start()
        runtime.items = CatalogueWrites(factory, settings, runtime.after_items_changed)
        # PostgreSQL: an erasure answers once its NOTIFY reached this process's listener
        notices = feed if engine.dialect.name == "postgresql" else None
        runtime.erasure = UserErasure(factory, settings, feed.users_erased, notices)
        manager.reload()
        # another version read the catalogue when it loaded: items written since then are
        # compared again; the feed reports items written by any process
        manager.on_new_version = lambda: refresher.submit(None)
        feed.on_items_changed = refresher.submit
        feed.on_users_erased = manager.forget_users
        refresher.start()
        manager.start_polling()
        runtime.drift_queue.start()
        if runtime.state_queue is not None:
            runtime.state_queue.start()
        # PostgreSQL announces new events and items (NOTIFY): while this listens, repeated
        # reads of an unchanged user are answered from memory and every process follows the
        # catalogue. SQLite: the feed stays off (one process: the local effects suffice).
        if engine.dialect.name == "postgresql":
            runtime.listener = PostgresChangeListener(settings.database_url, feed)
            runtime.listener.start()
        elif engine.dialect.name == "sqlite" and engine.url.database not in (None, "",
                                                                           ":memory:"):
            # No notifications: this process's ingestion path tells the feed of its own
            # writes before it acknowledges them (after_events_ingested); with several
            # processes, data_version tells every process that some other one wrote.
            if settings.sqlite_change_check == "data_version":
                runtime.sqlite_watcher = SqliteDataVersionWatcher(str(engine.url.database),
                                                                  feed)
                feed.guard = runtime.sqlite_watcher.check
            feed.set_live(True)
        # after count_committed_drifts: its commit listener reads what that one collects
        runtime.operations = operations.start(runtime)
        return runtime

    def stop(self) -> None:
        if self.operations is not None:
            self.operations.stop()
        if self.listener is not None:
            self.listener.stop()
        if self.sqlite_watcher is not None:
            self.sqlite_watcher.close()
        self.catalogue.stop()
        self.events.stop()  # what is queued is written (its requests are answered) first
        self.drift_queue.stop()
        if self.state_queue is not None:
            self.state_queue.stop()
        self.models.stop()
        if self.impressions is not None:
            self.impressions.stop()
        self.engine.dispose()

    # ------------------------------------------------------------------ effects
    def after_items_changed(self, item_ids: Sequence[str]) -> None:
        self.change_feed.everything_changed()  # titles in remembered answers
        self.catalogue.submit(list(item_ids))

    # ------------------------------------------------------------------ models
    def reload_model(self, force: bool = False) -> ReloadOutcome:
        return self.models.reload(force=force)

    def promote_challenger(self) -> Promotion:
        """The challenger becomes the champion (model_manager.ModelManager.promote_challenger)."""
        return self.models.promote_challenger()

    def model_for(self, user_id: str | None, champion: Recommender
                  ) -> tuple[Recommender, Role]:
        """The version that serves this user (the challenger for its share, while one is
        served) and its role; `champion` is the one the request took."""
        model = self.models.for_user(user_id, champion)
        return model, "champion" if model is champion else "challenger"

    def recommendation_served(self, response: RecommendationsOut, k: int, role: Role,
                              shown: bool = True) -> None:
        """Count a response and queue its impression (a user's, `shown`: not a HEAD request).
        Never waits: a full queue drops the impression (counted)."""
        self.metrics.recommendations.labels(role).inc()
        if self.impressions is None or response.user_id is None or not shown:
            return
        self.impressions.record(ImpressionRow(
            str(response.recommendation_id), response.user_id, response.model_version,
            [item.item_id for item in response.items], k, datetime.now(UTC)))

    def readiness(self) -> dict[str, Any]:
        """The checks of `/readyz`: the database answers, a model is loaded."""
        from sqlalchemy import exc as sa_exc

        from app.store.db import ping

        checks: dict[str, str] = {}
        try:
            ping(self.engine)
            checks["database"] = "ok"
        except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError) as error:
            checks["database"] = f"unavailable: {type(error).__name__}"
        manager = self.models
        if manager.loaded is not None:
            checks["model"] = "ok"
        else:
            checks["model"] = f"not loaded: {manager.last_error or 'loading'}"
        return checks

    def roles(self) -> dict[str, Role]:
        """What each served version is served as (the champion wins a tie)."""
        found: dict[str, Role] = {}
        challenger = self.models.serving_challenger
        if challenger is not None:
            found[challenger.version] = "challenger"
        if self.models.loaded is not None:
            found[self.models.loaded.version] = "champion"
        return found

    def online_metrics(self, *, since: datetime | None, until: datetime | None, k: int,
                       bucket: Literal["hour", "day", "week"]) -> OnlineMetricsOut:
        """Online metrics per version of the impressions made in [since, until)."""
        windows = Windows(self.settings.online_metrics_event_window,
                          self.settings.online_metrics_time_window_seconds)
        with self.session_factory() as session:
            return online_metrics(session, since=since, until=until, k=k, bucket=bucket,
                                  windows=windows, roles=self.roles())

    def challenger_state(self) -> str | None:
        """The challenger's state in words for `/readyz` (None: off). It never makes a worker
        unready: its users get the champion meanwhile."""
        slot = self.models.challenger
        if slot is None:
            return None
        if slot.served is not None:
            return f"serving v{slot.served.version}"
        if slot.last_error:
            return f"{slot.status}: {slot.last_error}; its users get the champion"
        return f"{slot.status}; its users get the champion"
