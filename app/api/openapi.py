"""The OpenAPI description: the key schemes declared, and who may read the description.

Keyed operations (those documenting a 401) carry `security`: an API key as a bearer token,
or as the password of HTTP Basic (what a browser sends for the dashboard). With
`public_docs` (the default) `/openapi.json`, `/docs` and `/redoc` answer without a key: they
hold no data, and client generators and fuzzers read them. With `public_docs=false` the
description needs a `read` key and the two HTML pages are off.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from app.api.deps import ReadScope

SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer",
                   "description": "An API key: `Authorization: Bearer <key>`."},
    "basicAuth": {"type": "http", "scheme": "basic",
                  "description": "HTTP Basic whose password is an API key (any user name)."},
}
OPENAPI_URL = "/openapi.json"


def docs_urls(public_docs: bool) -> dict[str, str | None]:
    """FastAPI's own documentation routes: served by FastAPI only when they are public."""
    if public_docs:
        return {"openapi_url": OPENAPI_URL, "docs_url": "/docs", "redoc_url": "/redoc"}
    return {"openapi_url": None, "docs_url": None, "redoc_url": None}


def install_openapi(app: FastAPI, public_docs: bool) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    if "401" in operation.get("responses", {}):
                        operation["security"] = [{"bearerAuth": []}, {"basicAuth": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    if not public_docs:
        @app.get(OPENAPI_URL, include_in_schema=False, dependencies=[ReadScope])
        async def keyed_openapi() -> JSONResponse:
            return JSONResponse(app.openapi())
