"""The FastAPI application: built by `create_app`, resources opened in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api.routes import events, health, items, users
from app.core.config import Settings, get_settings
from app.core.errors import install_error_handlers
from app.core.middleware import BodySizeLimit
from app.core.security import parse_api_keys
from app.store.db import make_engine, make_session_factory

logger = logging.getLogger("driftrec")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Engines (and, for serving, models) open here, never at import: CUDA does not
        # survive a fork and each uvicorn worker must own its connections.
        engine = make_engine(settings.database_url)
        app.state.engine = engine
        app.state.session_factory = make_session_factory(engine)
        if not app.state.api_keys:
            logger.warning("auth is off: no API keys configured; listen on 127.0.0.1 only")
        try:
            yield
        finally:
            engine.dispose()

    app = FastAPI(
        title="DriftRec",
        version="0.1.0",
        description="Interest profiles, interest-drift detection and drift-aware recommendations.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.api_keys = parse_api_keys(settings.api_keys)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    for module in (health, items, events, users):
        app.include_router(module.router)
    return app
