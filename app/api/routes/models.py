"""The served model: what is loaded, and an admin-triggered reload."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import AdminScope, ReadScope, RuntimeDep
from app.schemas.serving import ModelInfo, ReloadOut

router = APIRouter(prefix="/models", tags=["models"])


@router.get("/current", dependencies=[ReadScope], response_model=ModelInfo)
def current_model(runtime: RuntimeDep) -> ModelInfo:
    manager = runtime.models
    served = manager.loaded
    return ModelInfo(
        name=manager.settings.model_name, alias=manager.settings.model_alias,
        version=served.version if served else None, device=served.device if served else None,
        loaded_at=served.loaded_at if served else None,
        metrics=served.metrics if served else {}, last_checked_at=manager.last_checked_at,
        last_reload_error=manager.last_error, reload_failures=manager.reload_failures,
    )


@router.post("/reload", dependencies=[AdminScope], response_model=ReloadOut)
def reload_model(runtime: RuntimeDep, force: bool = False) -> ReloadOut:
    """Load the version the alias points at now (validated, then swapped in atomically)."""
    outcome = runtime.reload_model(force=force)
    return ReloadOut(changed=outcome.changed, version=outcome.version, error=outcome.error)
