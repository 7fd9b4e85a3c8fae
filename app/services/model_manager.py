"""The served models: loaded in the lifespan, reloaded when an alias moves, swapped atomically.

Requests take `manager.current` (the champion; `for_user` picks the challenger for its share
of users) once and use that object to the end, so a request in flight finishes on the version
it started with while a new one is swapped in. A champion version that fails to download,
load, or pass its smoke inference is refused: the old one keeps serving and `/models/current`
shows the error. A challenger that is missing or refused is served to nobody (its users get
the champion) and never touches the champion; while the registry cannot be asked, what is
served stays. Each served version has its own caches (remembered rankings, drift findings,
incremental states), so a user never gets another version's remembered answer.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from mlflow import MlflowClient
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.domain.assignment import serves_challenger
from app.domain.availability import Availability, Window
from app.domain.drift import ChangePoint
from app.ml.bundle import InterestModelBundle
from app.ml.catalogue import CatalogueItem, item_text
from app.ml.loader import load_bundle as load_bundle_dir
from app.ml.loader import load_registered, registry_client, resolve_version
from app.ml.topk import TopKIndex, candidates
from app.services.batching import MicroBatcher
from app.services.caches import LruCache as LruCache  # re-exported
from app.services.caches import UserStateCache
from app.services.interest_state import DEFAULT_MAX_BYTES as DEFAULT_STATE_BYTES
from app.services.interest_state import DEFAULT_MAX_USERS as DEFAULT_STATE_USERS
from app.services.interest_state import InterestStates
from app.services.item_embeddings import extend_with_items
from app.services.models import move_alias
from app.services.served_topk import build_served_topk
from app.store import repository

logger = logging.getLogger("driftrec.models")


DEFAULT_MAX_BATCH = 64  # histories per forward pass

EventWindow = tuple[Sequence[str], Sequence[float]]  # item ids, timestamps; oldest first
ScoreRequest = tuple[Sequence[str], Sequence[float], float | None]  # + the request time
DriftTrace = tuple[np.ndarray, np.ndarray]  # per-event drift probability and surprise


class ModelUnavailable(RuntimeError):
    """No model is loaded (no champion yet, or the first load failed)."""


@dataclass(frozen=True)
class ServedModel:
    bundle: InterestModelBundle
    name: str
    version: str
    alias: str
    run_id: str | None
    device: str
    loaded_at: datetime
    metrics: dict[str, Any] = field(default_factory=dict)
    # Drift findings per user, for the latest state of their events (last event, count): the
    # drift head over 200 events is the costliest part of a request, and its answer only
    # changes when the user has a new event.
    drift_cache: UserStateCache[Any] = field(default_factory=lambda: new_drift_cache(None))
    # Rankings per user (a few request-option variants), for the latest state of their events.
    ranking_cache: UserStateCache[Any] = field(
        default_factory=lambda: new_ranking_cache(None))
    max_batch: int = DEFAULT_MAX_BATCH
    # What each catalogue row was embedded from (item id -> CatalogueItem.digest): the
    # catalogue refresher re-embeds an item whose stored text or categories differ.
    catalogue: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    # Retired items and availability windows (never recommended outside them), kept in step
    # with the store by the catalogue refresher like the rows.
    availability: Availability = field(default_factory=Availability)
    # Sizes of the batches run (kind "score", "query" or "drift"): the metrics.
    observe_batch: Callable[[str, int], None] | None = field(default=None, repr=False)
    # An index over the item vectors (DRIFTREC_TOPK_INDEX, app.services.served_topk): with
    # one, a ranking re-scores the candidates it finds instead of the whole catalogue. Built
    # over the rows of the bundle it was made for; a catalogue swap keeps it, rows appended
    # since are scanned exactly (app.ml.topk.candidates).
    topk: TopKIndex | None = field(default=None, repr=False)
    # Concurrent requests share forward passes (see app.services.batching).
    scorer: MicroBatcher[ScoreRequest, np.ndarray] = field(init=False, repr=False)
    querier: MicroBatcher[ScoreRequest, np.ndarray] = field(init=False, repr=False)
    drift_tracer: MicroBatcher[EventWindow, DriftTrace] = field(init=False, repr=False)
    # The drift detector's state per user, carried forward event by event
    # (app.services.interest_state); None: a new, empty one (a new bundle needs one).
    interest_states: InterestStates | None = field(default=None, repr=False)
    interest_state_limits: tuple[int, int] = (DEFAULT_STATE_USERS, DEFAULT_STATE_BYTES)
    # Tables derived from this bundle on first use (the similar-items index): new per copy.
    derived: dict[str, Any] = field(init=False, repr=False, compare=False)
    derived_lock: threading.Lock = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        bundle = self.bundle
        object.__setattr__(self, "derived", {})
        object.__setattr__(self, "derived_lock", threading.Lock())
        observe = self.observe_batch

        def score(histories: Sequence[ScoreRequest]) -> list[np.ndarray]:
            if observe is not None:
                observe("score", len(histories))
            scores = bundle.score_next_batch([h[0] for h in histories],
                                             [h[1] for h in histories],
                                             at=[h[2] for h in histories])
            return list(scores.numpy())

        def query(histories: Sequence[ScoreRequest]) -> list[np.ndarray]:
            if observe is not None:
                observe("query", len(histories))
            vectors = bundle.query_vectors_batch([h[0] for h in histories],
                                                 [h[1] for h in histories],
                                                 at=[h[2] for h in histories])
            return list(vectors.cpu().numpy())

        def trace(histories: Sequence[EventWindow]) -> list[DriftTrace]:
            if observe is not None:
                observe("drift", len(histories))
            return bundle.drift_traces_batch([h[0] for h in histories],
                                             [h[1] for h in histories])

        object.__setattr__(self, "scorer", MicroBatcher(score, self.max_batch))
        object.__setattr__(self, "querier", MicroBatcher(query, self.max_batch))
        object.__setattr__(self, "drift_tracer", MicroBatcher(trace, self.max_batch))
        if self.interest_states is None or self.interest_states.bundle is not bundle:
            tracer = self.drift_tracer
            object.__setattr__(self, "interest_states", InterestStates(
                bundle, *self.interest_state_limits, max_batch=self.max_batch,
                replay=lambda items, times: tracer.submit((items, times))))

    def score_next(self, item_ids: Sequence[str], timestamps: Sequence[float],
                   at: float | None = None) -> np.ndarray:
        """Next-item scores of one history (float32[N]) for a request at ``at`` (epoch
        seconds; None: the last event's time), batched with concurrent requests."""
        return self.scorer.submit((item_ids, timestamps, at))

    def score_candidates(self, item_ids: Sequence[str], timestamps: Sequence[float],
                         at: float | None, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The rows the top-k index finds among the n best for one history, scored exactly:
        (int64[c] catalogue positions ascending, float32[c] scores as ``score_next`` gives
        them); the query vector is batched with concurrent requests. Needs ``topk``."""
        if self.topk is None:
            raise RuntimeError("score_candidates needs a top-k index (DRIFTREC_TOPK_INDEX)")
        query = self.querier.submit((item_ids, timestamps, at))
        return candidates(self.topk, query, self.item_vectors(), n)

    def item_vectors(self) -> np.ndarray:
        """The bundle's item vectors on the CPU (float32[N, H]), taken once per served copy:
        a view of the table on the CPU, a copy on CUDA that no request should make again."""
        vectors = self.derived.get("item_vectors")
        if vectors is None:
            with self.derived_lock:
                vectors = self.derived.get("item_vectors")
                if vectors is None:
                    vectors = self.derived["item_vectors"] = self.bundle.item_vectors()
        return vectors

    def detect_drift(self, item_ids: Sequence[str], timestamps: Sequence[float]
                     ) -> tuple[np.ndarray, ChangePoint | None]:
        """Drift probabilities and change point of one history, batched like `score_next`."""
        probs, surprise = self.drift_tracer.submit((item_ids, timestamps))
        return probs, self.bundle.change_point(probs, surprise)


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    changed: bool
    version: str | None
    error: str | None = None


def read_catalogue(factory: sessionmaker[Session], item_ids: Iterable[str] | None = None
                   ) -> tuple[list[CatalogueItem], dict[str, tuple[bool, Window]]]:
    """The stored catalogue (`item_ids`: only these) as the served model needs it: what each
    row is embedded from, and each item's lifecycle state (`lifecycle_state`). Streamed."""
    items: list[CatalogueItem] = []
    states: dict[str, tuple[bool, Window]] = {}
    with factory() as session:
        for row in repository.catalogue_rows(session, item_ids):
            items.append(CatalogueItem(row.item_id, item_text(row.title, row.text),
                                       tuple(row.categories or ())))
            states[row.item_id] = lifecycle_state(row)
    return items, states


def lifecycle_state(item: Any) -> tuple[bool, Window]:
    """An item's (active, window), for `Availability.updated` (an Item or a catalogue row)."""
    return bool(item.active), (_epoch(item.available_from), _epoch(item.available_until))


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def new_ranking_cache(settings: Settings | None) -> UserStateCache[Any]:
    from app.services.interests import ranking_size

    settings = settings or _DEFAULTS
    return UserStateCache(settings.ranking_cache_size, settings.ranking_cache_mb * MIB,
                          settings.ranking_cache_variants, ranking_size)


def new_drift_cache(settings: Settings | None) -> UserStateCache[Any]:
    from app.services.interests import drift_size

    settings = settings or _DEFAULTS
    return UserStateCache(settings.drift_cache_size, settings.drift_cache_mb * MIB, 1,
                          drift_size)


MIB = 1024 * 1024
_DEFAULTS = Settings.model_construct()  # the documented defaults (no environment read)


class NoChallenger(LookupError):
    """There is no challenger this worker serves that could be promoted (or its alias moved
    since it was loaded)."""


@dataclass(eq=False)
class AliasSlot:
    """One alias of the registered model and what this worker serves for it."""

    alias: str
    served: ServedModel | None = None
    last_error: str | None = None
    last_checked_at: datetime | None = None
    reload_failures: int = 0
    missing: bool = False  # the alias points at no version (a challenger not set, or ended)

    @property
    def status(self) -> str:
        """serving | missing (no version has the alias) | failed (refused) | loading."""
        if self.served is not None:
            return "serving"
        if self.missing:
            return "missing"
        return "failed" if self.last_error else "loading"


@dataclass(frozen=True, slots=True)
class Promotion:
    version: str  # the new champion (the challenger's version)
    previous: str | None  # the champion before


class ModelManager:
    """The champion (`settings.model_alias`) and, with `challenger_share` > 0, the challenger
    (`settings.challenger_alias`): each loaded, smoke-tested and swapped in atomically when
    its alias moves, one load at a time. A challenger that is missing or fails to load never
    touches the champion: its users are served the champion meanwhile."""

    def __init__(self, settings: Settings, factory: sessionmaker[Session],
                 load_bundle: Callable[[Path, str], InterestModelBundle] | None = None,
                 with_challenger: bool | None = None) -> None:
        self.settings = settings
        self.factory = factory
        self._load_bundle = load_bundle or load_bundle_dir
        self.champion = AliasSlot(settings.model_alias)
        wanted = settings.challenger_share > 0 if with_challenger is None else with_challenger
        self.challenger: AliasSlot | None = (AliasSlot(settings.challenger_alias) if wanted
                                             else None)
        # Called (under the reload lock) after a version is swapped in or refused: the metrics.
        self.on_reload: Callable[[ModelManager], None] | None = None
        # Called after another version was swapped in (outside the lock): the catalogue
        # refresher re-reads the catalogue, so no item written meanwhile is missed.
        self.on_new_version: Callable[[], None] | None = None
        self.observe_batch: Callable[[str, int], None] | None = None
        # One load and one swap at a time. The served bundle's encoder (its tokenizer is not
        # thread-safe) is used by the catalogue refresher's thread only; a load embeds with
        # the encoder of the bundle it loads.
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # ------------------------------------------------------------------ what is served
    @property
    def current(self) -> ServedModel:
        model = self.champion.served
        if model is None:
            raise ModelUnavailable(self.champion.last_error or "no model loaded")
        return model

    @property
    def loaded(self) -> ServedModel | None:
        return self.champion.served

    @property
    def last_error(self) -> str | None:
        return self.champion.last_error

    @property
    def last_checked_at(self) -> datetime | None:
        return self.champion.last_checked_at

    @property
    def reload_failures(self) -> int:
        return self.champion.reload_failures

    @property
    def serving_challenger(self) -> ServedModel | None:
        """The challenger version served to its share of users (None: everyone gets the
        champion)."""
        return None if self.challenger is None else self.challenger.served

    def for_user(self, user_id: str | None, champion: ServedModel) -> ServedModel:
        """What serves this user: the challenger when one is served and the user's stable
        hash falls in its share, else `champion` (taken by the caller for this request)."""
        challenger = self.serving_challenger
        if challenger is None or user_id is None or not serves_challenger(
                user_id, self.settings.challenger_share, self.settings.challenger_salt):
            return champion
        return challenger

    def served_models(self) -> list[ServedModel]:
        """Every distinct version served now (the champion first)."""
        found: list[ServedModel] = []
        for slot in self._slots():
            if slot.served is not None and all(slot.served is not m for m in found):
                found.append(slot.served)
        return found

    def _slots(self) -> list[AliasSlot]:
        return [self.champion] if self.challenger is None else [self.champion, self.challenger]

    def _client(self) -> MlflowClient:
        return registry_client(self.settings.mlflow_tracking_uri)

    # ------------------------------------------------------------------ loading
    def reload(self, force: bool = False) -> ReloadOutcome:
        """Load the version each alias points at, if it is not the one served (or `force`);
        the champion's outcome (a challenger's is in `challenger`)."""
        outcome, changed = self._reload_slot(self.champion, force)
        if self.challenger is not None:
            changed = self._reload_slot(self.challenger, force)[1] or changed
        if changed and self.on_new_version is not None:
            self.on_new_version()
        return outcome

    def _reload_slot(self, slot: AliasSlot, force: bool) -> tuple[ReloadOutcome, bool]:
        champion = slot is self.champion
        with self._reload_lock:
            slot.last_checked_at = datetime.now(UTC)
            try:
                version = resolve_version(self._client(), self.settings.model_name,
                                          slot.alias)
            except LookupError as error:
                if champion:
                    return self._refused(slot, error), False
                # no challenger (never set, or the experiment ended): the champion serves all
                if not slot.missing:
                    logger.info("no challenger: %s; serving the champion to every user", error)
                ended = slot.served is not None
                slot.served, slot.missing, slot.last_error = None, True, None
                self._notify()
                return ReloadOutcome(ended, None), False
            except Exception as error:  # the registry did not answer: keep what is served
                return self._refused(slot, error), False
            slot.missing = False
            served = slot.served
            if served is not None and served.version == str(version.version) and not force:
                # the alias is readable and points at what we serve: an earlier error
                # (registry away, a refused version since un-promoted) no longer applies
                slot.last_error = None
                return ReloadOutcome(False, served.version), False
            try:
                candidate = self._loaded_elsewhere(slot, str(version.version), force)
                candidate = candidate or self._prepare(version, slot.alias)
            except Exception as error:  # any failure keeps the champion serving
                if not champion:  # the alias moved away from what was served: serve nobody
                    slot.served = None
                return self._refused(slot, error), False
            slot.served = candidate  # the atomic swap
            slot.last_error = None
            logger.info("serving %s version %s on %s as %s", candidate.name, candidate.version,
                        candidate.device, slot.alias)
            self._notify()
        return ReloadOutcome(True, candidate.version), True

    def _refused(self, slot: AliasSlot, error: Exception) -> ReloadOutcome:
        slot.last_error = f"{type(error).__name__}: {error}"
        slot.reload_failures += 1
        if slot is self.champion:
            logger.warning("model reload failed, keeping the current version: %s",
                           slot.last_error)
        else:
            logger.warning("challenger %s refused; its users get the champion: %s",
                           slot.alias, slot.last_error)
        self._notify()
        served = slot.served
        return ReloadOutcome(False, served.version if served else None, slot.last_error)

    def _loaded_elsewhere(self, slot: AliasSlot, version: str, force: bool
                          ) -> ServedModel | None:
        """The version, when another alias serves it already (a promoted challenger becomes
        the champion without a second load)."""
        if force:
            return None
        for other in self._slots():
            if other is not slot and other.served is not None and other.served.version == version:
                return other.served
        return None

    def _notify(self) -> None:
        if self.on_reload is not None:
            self.on_reload(self)

    def _prepare(self, version: Any, alias: str) -> ServedModel:
        loaded = load_registered(version, self.settings.mlflow_tracking_uri,
                                 self.settings.model_download_dir, self.settings.device,
                                 alias, self._load_bundle)
        items, states = read_catalogue(self.factory)
        extension = extend_with_items(self.factory, loaded.bundle, items)
        bundle = extension.bundle
        if extension.from_store or extension.embedded:
            logger.info("v%s: %d catalogue item(s) from stored embeddings, %d embedded",
                        version.version, extension.from_store, extension.embedded)
        bundle.smoke_test()
        return ServedModel(
            bundle=bundle, name=version.name, version=str(version.version),
            alias=alias, run_id=version.run_id, device=str(bundle.device),
            loaded_at=datetime.now(UTC), metrics=dict(bundle.metrics),
            drift_cache=new_drift_cache(self.settings),
            ranking_cache=new_ranking_cache(self.settings),
            max_batch=self.settings.max_inference_batch,
            interest_state_limits=(self.settings.interest_state_users,
                                   self.settings.interest_state_mb * MIB),
            catalogue={item.item_id: item.digest for item in items},
            availability=Availability().updated(states),
            observe_batch=self.observe_batch,
            topk=build_served_topk(self.settings, bundle),
        )

    # ------------------------------------------------------------------ promotion
    def promote_challenger(self) -> Promotion:
        """Move the champion alias to the challenger's version in the registry and remove the
        challenger alias (the experiment is over), then serve it here at once (other workers
        follow at their next poll). NoChallenger when this worker serves no challenger or the
        alias has moved since it was loaded; RegistryUnavailable when MLflow does not answer."""
        slot = self.challenger
        with self._reload_lock:
            served = None if slot is None else slot.served
            if slot is None or served is None:
                why = ("the challenger is off (DRIFTREC_CHALLENGER_SHARE=0)" if slot is None
                       else f"no challenger is served ({slot.status}"
                       + (f": {slot.last_error})" if slot.last_error else ")"))
                raise NoChallenger(why)
            client, name = self._client(), self.settings.model_name
            try:
                pointed = str(resolve_version(client, name, slot.alias).version)
            except LookupError as error:
                raise NoChallenger(str(error)) from error
            if pointed != served.version:
                raise NoChallenger(f"the {slot.alias} alias points at v{pointed} since v"
                                   f"{served.version} was loaded here: reload first")
            previous = self.champion.served.version if self.champion.served else None
            move_alias(client, name, self.settings.model_alias, served.version,
                       remove=slot.alias)
            logger.info("promoted %s v%s to %s (was v%s)", slot.alias, served.version,
                        self.settings.model_alias, previous)
        self.reload()
        return Promotion(served.version, previous)

    # ------------------------------------------------------------------ catalogue swaps
    def swap_catalogue(self, expected: ServedModel, bundle: InterestModelBundle,
                       catalogue: Mapping[str, bytes],
                       availability: Availability | None = None) -> bool:
        """Serve `bundle` (a copy of `expected`'s with catalogue rows added or replaced) and
        `availability` (None: unchanged) wherever `expected` is still served; False when
        another version was swapped in meanwhile."""
        availability = expected.availability if availability is None else availability
        with self._reload_lock:
            slots = [slot for slot in self._slots() if slot.served is expected]
            if not slots:
                return False
            if bundle is expected.bundle:  # same rows: only what they were embedded from
                if availability == expected.availability:
                    replaced = dataclasses.replace(expected, catalogue=catalogue)
                else:  # remembered rankings may hold items retired now
                    replaced = dataclasses.replace(
                        expected, catalogue=catalogue, availability=availability,
                        ranking_cache=new_ranking_cache(self.settings))
            else:  # a fresh copy: new caches (the catalogue changed) and batchers
                replaced = dataclasses.replace(
                    expected, bundle=bundle, catalogue=catalogue, availability=availability,
                    drift_cache=new_drift_cache(self.settings),
                    ranking_cache=new_ranking_cache(self.settings), interest_states=None)
            for slot in slots:
                slot.served = replaced
            return True

    # ------------------------------------------------------------------ polling
    def start_polling(self) -> None:
        interval = self.settings.model_poll_seconds
        if interval <= 0 or self._poller is not None:
            return

        def poll() -> None:
            while not self._stop.wait(interval):
                self.reload()

        self._poller = threading.Thread(target=poll, name="model-poller", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
