"""`GET /metrics`: Prometheus exposition of the service's metrics (app.core.metrics).

Needs the `read` scope when API keys are configured (Prometheus sends one with
`authorization: {credentials: <key>}` in its scrape config); open when auth is off.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.api.deps import MetricsDep, ReadScope

router = APIRouter(tags=["operations"])


@router.get("/metrics", dependencies=[ReadScope], response_class=Response,
            responses={200: {"description": "Prometheus text exposition format.",
                             "content": {"text/plain": {"schema": {"type": "string"}}}}})
def metrics(request: Request, registry: MetricsDep) -> Response:
    """Request counts and latencies per route, the served model version, reload failures,
    events ingested and duplicates, drifts detected."""
    body, content_type = registry.exposition(
        request.headers.get("accept", ""))
    return Response(body, media_type=content_type)
