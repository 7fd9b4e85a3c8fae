"""The change notifications' wire format: one PostgreSQL channel, payloads of user ids.

Writers (app.store.repository.announce_changes) and the listener in each serving process
(app.services.change_feed) share it.
"""

from __future__ import annotations

from collections.abc import Iterable

CHANNEL = "driftrec_changes"
EVERYTHING = "*"  # payload: the catalogue changed, or too many users to list
PAYLOAD_LIMIT = 7_900  # PostgreSQL refuses NOTIFY payloads of 8,000 bytes or more
MAX_PAYLOADS = 20  # a batch touching more users than fits in these says EVERYTHING instead


def change_payloads(user_ids: Iterable[str] | None) -> list[str]:
    """NOTIFY payloads announcing these users' new events (None: everything changed).

    Ids are newline-separated: the id pattern admits no whitespace."""
    if user_ids is None:
        return [EVERYTHING]
    payloads: list[str] = []
    current: list[str] = []
    size = 0
    for user_id in user_ids:
        if size + len(user_id) + 1 > PAYLOAD_LIMIT:
            payloads.append("\n".join(current))
            current, size = [], 0
        current.append(user_id)
        size += len(user_id) + 1
    if current:
        payloads.append("\n".join(current))
    return payloads if len(payloads) <= MAX_PAYLOADS else [EVERYTHING]
