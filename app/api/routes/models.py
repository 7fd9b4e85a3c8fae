"""The served models: what is loaded, an admin-triggered reload, champion and challenger."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from app.api.deps import AdminScope, ReadScope, RuntimeDep
from app.core.errors import ApiError
from app.ml.loader import RegistryUnavailable
from app.schemas.common import ErrorOut, Timestamp
from app.schemas.serving import (
    MAX_K,
    ChallengerInfo,
    ModelInfo,
    OnlineMetricsOut,
    PromotionOut,
    ReloadOut,
)
from app.services.model_manager import AliasSlot, NoChallenger

router = APIRouter(prefix="/models", tags=["models"])


@router.get("/current", dependencies=[ReadScope], response_model=ModelInfo)
def current_model(runtime: RuntimeDep) -> ModelInfo:
    manager = runtime.models
    served = None if manager.loaded is None else manager.loaded.model
    return ModelInfo(
        name=manager.settings.model_name, alias=manager.settings.model_alias,
        version=served.version if served else None, device=served.device if served else None,
        loaded_at=served.loaded_at if served else None,
        metrics=served.metrics if served else {}, last_checked_at=manager.last_checked_at,
        last_reload_error=manager.last_error, reload_failures=manager.reload_failures,
        challenger=_challenger(manager.challenger, manager.settings.challenger_share),
    )


def _challenger(slot: AliasSlot | None, share: float) -> ChallengerInfo | None:
    if slot is None:
        return None
    served = None if slot.served is None else slot.served.model
    return ChallengerInfo(
        alias=slot.alias, share=share, status=slot.status,  # type: ignore[arg-type]
        version=served.version if served else None, device=served.device if served else None,
        loaded_at=served.loaded_at if served else None, last_checked_at=slot.last_checked_at,
        last_reload_error=slot.last_error, reload_failures=slot.reload_failures)


@router.post("/reload", dependencies=[AdminScope], response_model=ReloadOut)
def reload_model(runtime: RuntimeDep, force: bool = False) -> ReloadOut:
    """Load the version each alias points at now (validated, then swapped in atomically)."""
    outcome = runtime.reload_model(force=force)
    return ReloadOut(changed=outcome.changed, version=outcome.version, error=outcome.error)


@router.post("/promote-challenger", dependencies=[AdminScope], response_model=PromotionOut,
             responses={409: {"model": ErrorOut, "description": "No challenger is served "
                              "here (off, missing or refused), or its alias moved since."}})
def promote_challenger(runtime: RuntimeDep) -> PromotionOut:
    """Make the challenger the champion: the champion alias moves to the challenger's
    version in MLflow and the challenger alias is removed (the experiment is over). This
    worker serves it at once, the others at their next alias poll."""
    try:
        promotion = runtime.promote_challenger()
    except NoChallenger as error:
        raise ApiError(409, "no_challenger", f"nothing to promote: {error}") from error
    except RegistryUnavailable as error:
        raise ApiError(503, "registry_unavailable", str(error)) from error
    return PromotionOut(champion=promotion.version, previous_champion=promotion.previous,
                        challenger_alias_removed=True)


@router.get("/online-metrics", dependencies=[ReadScope], response_model=OnlineMetricsOut)
async def online_metrics(
    runtime: RuntimeDep,
    since: Timestamp | None = None,
    until: Timestamp | None = None,
    k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
    bucket: Literal["hour", "day", "week"] = "day",
) -> OnlineMetricsOut:
    """Per model version, over the impressions made in [since, until): settled impressions,
    hits, hit rate@k and mean reciprocal rank@k with 95 % intervals, and their series per
    bucket. A hit: one of the user's next events (DRIFTREC_ONLINE_METRICS_EVENT_WINDOW, within
    DRIFTREC_ONLINE_METRICS_TIME_WINDOW_SECONDS) is on one of the first k items shown."""
    return await run_in_threadpool(runtime.online_metrics, since=since, until=until, k=k,
                                   bucket=bucket)
