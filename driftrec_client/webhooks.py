"""Checking a drift webhook's signature on the receiving side (README "Operations").

    from driftrec_client.webhooks import verify

    if not verify(secret, request.headers, raw_body):
        return 401
    record = json.loads(raw_body)["record"]     # deduplicate by X-DriftRec-Delivery

The signature is HMAC-SHA256 under the shared secret over the timestamp header, a dot and the
raw body; a timestamp further than `tolerance_seconds` from this clock is refused, so a captured
request cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

TIMESTAMP_HEADER = "X-DriftRec-Timestamp"
SIGNATURE_HEADER = "X-DriftRec-Signature"
DELIVERY_HEADER = "X-DriftRec-Delivery"


def expected_signature(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def verify(secret: str, headers: Mapping[str, str], body: bytes,
           tolerance_seconds: float = 300.0, now: float | None = None) -> bool:
    """Whether the request was signed with `secret` within `tolerance_seconds` of now."""
    lowered = {key.lower(): value for key, value in headers.items()}
    timestamp = lowered.get(TIMESTAMP_HEADER.lower(), "")
    given = lowered.get(SIGNATURE_HEADER.lower(), "")
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        return False
    if age > tolerance_seconds:
        return False
    return hmac.compare_digest(expected_signature(secret, timestamp, body), given)
