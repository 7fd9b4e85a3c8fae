"""Liveness and readiness probes (no key needed: orchestrators call them)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import RuntimeDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "A dependency is not ready."}})
def readyz(runtime: RuntimeDep) -> JSONResponse:
    """The database answers and a model (the champion) is loaded. With a challenger enabled,
    `challenger` says how it is: it never makes a worker unready (its users get the
    champion while it is missing or refused)."""
    checks = runtime.readiness()
    ready = all(value == "ok" for value in checks.values())
    body: dict[str, Any] = {"status": "ready" if ready else "not_ready", "checks": checks}
    challenger = runtime.challenger_state()
    if challenger is not None:
        body["challenger"] = challenger
    return JSONResponse(body, status_code=200 if ready else 503)
