"""The change feed's wire format and counters (the PostgreSQL round trip is in test_serving)."""

from __future__ import annotations

from app.services.change_feed import ChangeFeed
from app.store.changes import EVERYTHING, MAX_PAYLOADS, PAYLOAD_LIMIT, change_payloads


def test_payloads_list_every_user_within_the_size_limit() -> None:
    users = [f"user-{n:05d}" for n in range(2_000)]
    payloads = change_payloads(users)
    assert len(payloads) > 1
    assert all(len(p.encode()) <= PAYLOAD_LIMIT for p in payloads)
    assert [u for p in payloads for u in p.split("\n")] == users
    assert change_payloads([]) == []
    assert change_payloads(None) == [EVERYTHING]


def test_too_many_users_for_the_payloads_say_everything_changed() -> None:
    users = [f"u{n:09d}" for n in range(MAX_PAYLOADS * PAYLOAD_LIMIT // 10 + 1)]
    assert change_payloads(users) == [EVERYTHING]


def test_tokens_move_with_their_users_and_with_everything() -> None:
    feed = ChangeFeed()
    assert feed.token("a") is None  # not listening: nothing can be vouched for
    feed.set_live(True)
    a, b = feed.token("a"), feed.token("b")
    feed.apply("a\nc")
    assert feed.token("a") != a and feed.token("b") == b
    moved = feed.token("a")
    feed.apply(EVERYTHING)
    assert feed.token("a") != moved and feed.token("b") != b


def test_a_feed_that_was_down_forgets_everything_when_it_is_back() -> None:
    feed = ChangeFeed()
    feed.set_live(True)
    before = feed.token("a")
    feed.set_live(False)  # notifications sent meanwhile are lost ...
    assert feed.token("a") is None
    feed.set_live(True)
    assert feed.token("a") != before  # ... so nothing remembered earlier is trusted


def test_item_payloads_list_every_item_and_reach_the_catalogue() -> None:
    from app.store.changes import ALL_ITEMS, ITEMS_PREFIX, item_change_payloads

    items = [f"item-{n:05d}" for n in range(2_000)]
    payloads = item_change_payloads(items)
    assert len(payloads) > 1 and all(p.startswith(ITEMS_PREFIX) for p in payloads)
    assert all(len(p.encode()) <= PAYLOAD_LIMIT for p in payloads)
    assert item_change_payloads([f"i{n:09d}" for n in range(MAX_PAYLOADS * PAYLOAD_LIMIT)]
                                ) == [ALL_ITEMS]
    feed = ChangeFeed()
    heard: list[list[str] | None] = []
    feed.on_items_changed = heard.append
    feed.set_live(True)  # (re)connected: notifications may have been lost, compare them all
    token = feed.token("items:a")  # a user id that looks like a payload prefix
    for payload in payloads:
        feed.apply(payload)
    feed.apply(ALL_ITEMS)
    assert heard[0] is None and [i for ids in heard[1:-1] for i in ids or []] == items
    assert heard[-1] is None
    assert feed.token("items:a") != token  # titles in remembered answers may have changed
    feed.apply("items:a\nb")  # user ids, not items
    assert len(heard) == len(payloads) + 2
