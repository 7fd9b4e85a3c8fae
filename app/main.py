"""The FastAPI application: built by `create_app`, resources opened in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from anyio import to_thread
from fastapi import Depends, FastAPI

from app.api.openapi import docs_urls, install_openapi
from app.api.query import single_valued_query
from app.api.routes import (
    dashboard,
    drift,
    events,
    health,
    interests,
    items,
    metrics,
    models,
    users,
)
from app.core.config import Settings, get_settings
from app.core.cpus import cpu_budget, serving_workers, torch_threads_for
from app.core.errors import install_error_handlers
from app.core.logging import configure_logging
from app.core.metrics import new_metrics
from app.core.middleware import BodySizeLimit, HeadAsGet
from app.core.request_context import ObservedFastAPI
from app.core.security import parse_api_keys
from app.schemas.common import ErrorOut
from app.services.runtime import ServingRuntime

logger = logging.getLogger("driftrec")


def set_serving_threads(requested: int | None) -> int:
    """torch's intra-op threads for this worker (app/core/cpus.py), logged in one line."""
    budget = cpu_budget()
    workers = serving_workers()
    threads = torch_threads_for(workers, requested, budget.usable)
    torch.set_num_threads(threads)
    if requested is None:
        how = f"the usable cores split among {workers} worker{'s' if workers > 1 else ''}"
    elif threads < requested:
        how = f"DRIFTREC_TORCH_THREADS={requested}, capped at the usable cores"
    else:
        how = f"DRIFTREC_TORCH_THREADS={requested}"
    logger.info("torch threads per worker: %d (%s; %s)", threads, how, budget.describe(),
                extra={"torch_threads": threads, "workers": workers,
                       "cpu_affinity": budget.affinity, "cpu_quota": budget.quota})
    return threads


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Engines (and, for serving, models) open here, never at import: CUDA does not
        # survive a fork and each uvicorn worker must own its connections.
        # Per-worker intra-op threads: torch's default (all the machine's cores) oversubscribes
        # the CPU as soon as several workers run inference at once, or the process may use
        # fewer cores than the machine has (affinity mask, container quota).
        set_serving_threads(settings.torch_threads)
        to_thread.current_default_thread_limiter().total_tokens = settings.request_threads
        if not app.state.api_keys:
            logger.warning("auth is off: no API keys configured; listen on 127.0.0.1 only")
        runtime = ServingRuntime.start(settings, app.state.metrics)
        app.state.runtime = runtime
        try:
            yield
        finally:
            runtime.stop()
            app.state.metrics.process_exiting()

    # Here, not in the lifespan: uvicorn loads the app before it logs its start-up lines.
    configure_logging(settings)
    app = ObservedFastAPI(
        title="DriftRec",
        version="0.1.0",
        description="Interest profiles, interest-drift detection and drift-aware recommendations.",
        lifespan=lifespan,
        dependencies=[Depends(single_valued_query)],
        **docs_urls(settings.public_docs),
    )
    app.state.settings = settings
    app.state.metrics = new_metrics()
    app.state.api_keys = parse_api_keys(settings.api_keys)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(HeadAsGet)
    # Documented on every keyed operation (the probes need no key): what a client must handle
    # besides the operation's own answers.
    keyed = {401: {"model": ErrorOut, "description": "Missing or invalid API key."},
             403: {"model": ErrorOut, "description": "The key lacks the needed scope."},
             503: {"model": ErrorOut, "description": "Database (or model) unavailable; "
                                                     "retry after `Retry-After` seconds."}}
    app.include_router(health.router)
    for module in (items, events, users, models, interests, drift, dashboard, metrics):
        app.include_router(module.router, responses=keyed)
    install_openapi(app, settings.public_docs)
    return app
