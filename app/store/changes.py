"""The change notifications' wire format: one PostgreSQL channel, payloads of user ids, or of
item ids after `ITEMS_PREFIX` when items were inserted or updated.

Writers (app.store.repository.announce_changes) and the listener in each serving process
(app.services.change_feed) share it.
"""

from __future__ import annotations

from collections.abc import Iterable

CHANNEL = "driftrec_changes"
EVERYTHING = "*"  # payload: the catalogue changed, or too many users to list
PAYLOAD_LIMIT = 7_900  # PostgreSQL refuses NOTIFY payloads of 8,000 bytes or more
MAX_PAYLOADS = 20  # a batch touching more users than fits in these says EVERYTHING instead
# "+items:" + newline-separated item ids: these items were inserted or updated (each worker
# re-reads and re-embeds them); "+items:*": too many to list, re-read the catalogue. No user
# id can start with "+" (ids start with a letter or digit), so the payloads never mix up.
ITEMS_PREFIX = "+items:"
ALL_ITEMS = ITEMS_PREFIX + "*"
# "+erased:" + newline-separated user ids: these users' data was erased; every worker drops
# what it remembers of them (rankings, drift findings), not only marks it stale.
ERASED_PREFIX = "+erased:"


def change_payloads(user_ids: Iterable[str] | None) -> list[str]:
    """NOTIFY payloads announcing these users' new events (None: everything changed).

    Ids are newline-separated: the id pattern admits no whitespace."""
    if user_ids is None:
        return [EVERYTHING]
    payloads = _pack(user_ids, PAYLOAD_LIMIT)
    return payloads if len(payloads) <= MAX_PAYLOADS else [EVERYTHING]


def item_change_payloads(item_ids: Iterable[str]) -> list[str]:
    """NOTIFY payloads announcing that these items were inserted or updated."""
    payloads = _pack(item_ids, PAYLOAD_LIMIT - len(ITEMS_PREFIX))
    if len(payloads) > MAX_PAYLOADS:
        return [ALL_ITEMS]
    return [ITEMS_PREFIX + payload for payload in payloads]


def erasure_payloads(user_ids: Iterable[str]) -> list[str]:
    """NOTIFY payloads announcing that these users' data was erased (never EVERYTHING: each
    id must reach every worker, which forgets that user's entries)."""
    return [ERASED_PREFIX + payload for payload in _pack(user_ids, PAYLOAD_LIMIT
                                                          - len(ERASED_PREFIX))]


def parse_erased_payload(payload: str) -> list[str]:
    return [i for i in payload[len(ERASED_PREFIX):].split("\n") if i]


def parse_item_payload(payload: str) -> list[str] | None:
    """The item ids of an item payload (None: every item may have changed)."""
    body = payload[len(ITEMS_PREFIX):]
    return None if body == "*" else [i for i in body.split("\n") if i]


def _pack(ids: Iterable[str], limit: int) -> list[str]:
    payloads: list[str] = []
    current: list[str] = []
    size = 0
    for user_id in ids:
        if size + len(user_id.encode()) + 1 > limit:
            payloads.append("\n".join(current))
            current, size = [], 0
        current.append(user_id)
        size += len(user_id.encode()) + 1
    if current:
        payloads.append("\n".join(current))
    return payloads
