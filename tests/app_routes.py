"""Every HTTP route of the app, flattened, for tests that must cover new endpoints unasked."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.routing import APIRoute

try:  # FastAPI >= 0.16x keeps included routers as nodes of the route list
    from fastapi.routing import iter_route_contexts
except ImportError:  # older FastAPI: the route list is flat already
    iter_route_contexts = None


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # the template, e.g. /users/{user_id}/events
    in_schema: bool
    is_api_route: bool


def endpoints(app: FastAPI) -> list[Endpoint]:
    """One entry per (method, path) the app answers, HEAD left out (GET's twin)."""
    if iter_route_contexts is not None:
        pairs = [(ctx.original_route, ctx.path) for ctx in iter_route_contexts(app.routes)]
    else:
        pairs = [(route, getattr(route, "path", None)) for route in app.routes]
    found = []
    for route, path in pairs:
        if path is None:
            continue
        is_api = isinstance(route, APIRoute)
        in_schema = bool(getattr(route, "include_in_schema", False)) and is_api
        for method in sorted(getattr(route, "methods", None) or ()):
            if method != "HEAD":
                found.append(Endpoint(method, path, in_schema, is_api))
    return found
