"""The outermost layer of every HTTP request: request id, access log line, request metrics.

It wraps even Starlette's ServerErrorMiddleware (see `ObservedFastAPI`), so a 500 carries the
`X-Request-ID` header too and the traceback logged for it is tagged with the request id, and
413s from BodySizeLimit are counted like any other response.

The access line names the route template (`/recommend/{user_id}`), never the raw path, query
string or headers: those may carry user ids and credentials.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.routing import Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.logging import REQUEST_ID_HEADER, accept_request_id, request_id_var
from app.core.metrics import UNMATCHED_ROUTE, Metrics

access_logger = logging.getLogger("driftrec.access")


try:  # FastAPI >= 0.16x keeps included routers as nodes of the route list; this flattens them
    from fastapi.routing import iter_route_contexts as _flat_routes
except ImportError:  # older FastAPI: the app's route list is flat already
    def _flat_routes(routes: Sequence[Any]) -> Iterable[Any]:
        return routes


def route_template(scope: Scope, router: Router) -> str:
    """The template of the route that handled (or would handle) the request."""
    # The router leaves the route it chose in the scope. (Our routers are included without a
    # prefix, so a route's own template is its full path.)
    template = getattr(scope.get("route"), "path_format", None)
    if not isinstance(template, str):
        # Answered before routing (a 413 on Content-Length) or no route matched (404): match
        # the routes here as the router would have, a full match before a partial one (405).
        partial = None
        for route in _flat_routes(router.routes):
            match, _ = route.matches(scope)
            if match is Match.FULL:
                template = route.path_format
                break
            if match is Match.PARTIAL and partial is None:
                partial = route.path_format
        else:
            template = partial
    return template if isinstance(template, str) and template else UNMATCHED_ROUTE


def allowed_methods(scope: Scope, router: Router) -> list[str]:
    """Every method some route answers at the request's path (HEAD wherever GET is: the HEAD
    middleware answers it), for the `Allow` header of a 405. Starlette's own lists only the
    methods of the first route whose path matched, and /items has two."""
    methods: set[str] = set()
    for route in _flat_routes(router.routes):
        match, _ = route.matches({**scope, "method": "GET"} if scope.get("method") == "HEAD"
                                 else scope)
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics, router: Router) -> None:
        self.app, self.metrics, self.router = app, metrics, router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        presented = None
        for name, value in scope.get("headers") or ():
            if name == b"x-request-id":
                presented = value.decode("latin-1")
                break
        request_id = accept_request_id(presented)
        token = request_id_var.set(request_id)
        status = 500  # what the client gets if the app fails before starting a response

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
                if status == 405:  # RFC 9110: a 405 lists the methods the resource answers
                    methods = allowed_methods(scope, self.router)
                    if methods:
                        headers["Allow"] = ", ".join(methods)
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        finally:
            seconds = time.perf_counter() - started
            method = scope.get("method", "")
            route = route_template(scope, self.router)
            self.metrics.observe_request(method, route, status, seconds)
            access_logger.info(
                "%s %s %d", method, route, status,
                extra={"method": method, "route": route, "status": status,
                       "duration_ms": round(seconds * 1000, 3)})
            request_id_var.reset(token)


class ObservedFastAPI(FastAPI):
    """FastAPI with `RequestContext` outside all other middleware (Starlette puts its
    ServerErrorMiddleware outside anything `add_middleware` adds). Needs `state.metrics`."""

    def build_middleware_stack(self) -> ASGIApp:
        return RequestContext(super().build_middleware_stack(), self.state.metrics, self.router)
