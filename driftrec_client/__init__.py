"""A Python client of the DriftRec HTTP API, blocking and async, on httpx.

    from driftrec_client import DriftRecClient

    with DriftRecClient("http://127.0.0.1:8000", api_key="...") as client:
        client.ingest_events(events)                     # batched, retried, deduplicated
        top = client.recommend("user-42", k=10)

Answers are the API's own pydantic models (`app.schemas`, which import neither the web
framework, the database layer nor torch: importing this package loads none of them); errors
are `DriftRecError`s carrying the API's code, message and field-level problems.
"""

from driftrec_client._calls import IngestSummary, Retry
from driftrec_client.client import AsyncDriftRecClient, DriftRecClient
from driftrec_client.errors import (
    Conflict,
    ConnectionFailed,
    DriftRecError,
    FieldProblem,
    Forbidden,
    InvalidRequest,
    NotFound,
    Unauthorized,
    Unavailable,
)

__all__ = [
    "AsyncDriftRecClient", "Conflict", "ConnectionFailed", "DriftRecClient", "DriftRecError",
    "FieldProblem", "Forbidden", "IngestSummary", "InvalidRequest", "NotFound", "Retry",
    "Unauthorized", "Unavailable",
]
