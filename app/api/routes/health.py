"""Liveness and readiness probes (no key needed: orchestrators call them)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc

from app.store.db import ping

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "A dependency is not ready."}})
def readyz(request: Request) -> JSONResponse:
    """The database answers and a model is loaded."""
    checks: dict[str, str] = {}
    try:
        ping(request.app.state.engine)
        checks["database"] = "ok"
    except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError) as error:
        checks["database"] = f"unavailable: {type(error).__name__}"
    manager = request.app.state.models
    if manager.loaded is not None:
        checks["model"] = "ok"
    else:
        checks["model"] = f"not loaded: {manager.last_error or 'loading'}"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse({"status": "ready" if ready else "not_ready", "checks": checks},
                        status_code=200 if ready else 503)
