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

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.domain.assignment import serves_challenger
from app.domain.availability import Availability, Window
from app.ml.bundle import InterestModelBundle
from app.ml.catalogue import CatalogueItem, item_text
from app.ml.loader import load_bundle as load_bundle_dir
from app.ml.loader import load_registered, registry_client, resolve_version
from app.services.change_feed import ChangeFeed
from app.services.item_embeddings import extend_with_items
from app.services.models import move_alias
from app.services.recommender import Recommender
from app.services.served_model import ModelUnavailable, ServedModel
from app.services.served_topk import build_served_topk
from app.store import locks, repository

logger = logging.getLogger("driftrec.models")


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


def _alias_target(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version the alias points at now (None: no version has it)."""
    try:
        return str(resolve_version(client, name, alias).version)
    except LookupError:
        return None


class NoChallenger(LookupError):
    """There is no challenger this worker serves that could be promoted (or its alias moved
    since it was loaded)."""


@dataclass(eq=False)
class AliasSlot:
    """One alias of the registered model and what this worker serves for it."""

    alias: str
    served: Recommender | None = None
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
                 with_challenger: bool | None = None, feed: ChangeFeed | None = None,
                 reads: sessionmaker[Session] | None = None) -> None:
        self.settings = settings
        self.factory = factory
        # the sessions served versions read requests' data through (only reads)
        self.reads = reads or factory
        # what the served versions ask whether a user's events changed (None: the store)
        self.feed = feed
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
    def current(self) -> Recommender:
        model = self.champion.served
        if model is None:
            raise ModelUnavailable(self.champion.last_error or "no model loaded")
        return model

    @property
    def loaded(self) -> Recommender | None:
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
    def serving_challenger(self) -> Recommender | None:
        """The challenger version served to its share of users (None: everyone gets the
        champion)."""
        return None if self.challenger is None else self.challenger.served

    def for_user(self, user_id: str | None, champion: Recommender) -> Recommender:
        """What serves this user: the challenger when one is served and the user's stable
        hash falls in its share, else `champion` (taken by the caller for this request)."""
        challenger = self.serving_challenger
        if challenger is None or user_id is None or not serves_challenger(
                user_id, self.settings.challenger_share, self.settings.challenger_salt):
            return champion
        return challenger

    def served_models(self) -> list[Recommender]:
        """Every distinct version served now (the champion first)."""
        found: list[Recommender] = []
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
                          ) -> Recommender | None:
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

    def _prepare(self, version: Any, alias: str) -> Recommender:
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
        model = ServedModel(
            bundle=bundle, name=version.name, version=str(version.version),
            alias=alias, run_id=version.run_id, device=str(bundle.device),
            loaded_at=datetime.now(UTC), metrics=dict(bundle.metrics),
            max_batch=self.settings.max_inference_batch,
            catalogue={item.item_id: item.digest for item in items},
            availability=Availability().updated(states),
            observe_batch=self.observe_batch,
            topk=build_served_topk(self.settings, bundle),
        )
        return Recommender(model, self.settings, self.reads, self.feed)

    # ------------------------------------------------------------------ promotion
    def promote_challenger(self) -> Promotion:
        """Move the champion alias to the challenger's version in the registry and remove the
        challenger alias (the experiment is over), then serve it here at once (other workers
        follow at their next poll). NoChallenger when this worker serves no challenger, the
        alias has moved since it was loaded, or another promotion (any worker's) took it
        first; RegistryUnavailable when MLflow does not answer.

        MLflow's aliases have no compare-and-set, so the compare happens under a lock every
        worker shares (the store's): both aliases are re-read under it, moved, and read
        again. Two workers promoting at once: one moves the aliases, the other then finds
        the challenger alias gone and is refused."""
        slot = self.challenger
        name = self.settings.model_name
        with locks.exclusive(self.factory, f"promote-challenger:{name}"), self._reload_lock:
            served = None if slot is None else slot.served
            if slot is None or served is None:
                why = ("the challenger is off (DRIFTREC_CHALLENGER_SHARE=0)" if slot is None
                       else f"no challenger is served ({slot.status}"
                       + (f": {slot.last_error})" if slot.last_error else ")"))
                raise NoChallenger(why)
            client, champion_alias = self._client(), self.settings.model_alias
            pointed = _alias_target(client, name, slot.alias)
            if pointed is None:
                raise NoChallenger(f"no version of {name!r} has alias {slot.alias!r} (promoted "
                                   "or ended elsewhere)")
            if pointed != served.version:
                raise NoChallenger(f"the {slot.alias} alias points at v{pointed} since v"
                                   f"{served.version} was loaded here: reload first")
            # what the registry's champion is, not what this worker serves (it may lag)
            previous = _alias_target(client, name, champion_alias)
            move_alias(client, name, champion_alias, served.version, remove=slot.alias)
            # a registry client outside the service takes no lock: see that nothing moved
            now, left = (_alias_target(client, name, champion_alias),
                         _alias_target(client, name, slot.alias))
            if now != served.version or left is not None:
                raise NoChallenger(
                    f"the aliases moved during the promotion ({champion_alias}: v{now}, "
                    f"{slot.alias}: {'v' + left if left else 'none'}): check the registry")
            logger.info("promoted %s v%s to %s (was v%s)", slot.alias, served.version,
                        champion_alias, previous)
        self.reload()
        return Promotion(served.version, previous)

    # ------------------------------------------------------------------ catalogue swaps
    def swap_catalogue(self, expected: Recommender, bundle: InterestModelBundle,
                       catalogue: Mapping[str, bytes],
                       availability: Availability | None = None) -> bool:
        """Serve `bundle` (a copy of `expected`'s with catalogue rows added or replaced) and
        `availability` (None: unchanged) wherever `expected` is still served; False when
        another version was swapped in meanwhile. What survives is the served object's
        call (`Recommender.with_catalogue`)."""
        availability = expected.model.availability if availability is None else availability
        with self._reload_lock:
            slots = [slot for slot in self._slots() if slot.served is expected]
            if not slots:
                return False
            replaced = expected.with_catalogue(bundle, catalogue, availability)
            for slot in slots:
                slot.served = replaced
            return True

    def forget_users(self, user_ids: Sequence[str] | None) -> None:
        """What every served version (champion and challenger) remembers of these users
        (None: of everyone) is dropped."""
        for served in self.served_models():
            served.forget(user_ids)

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
