"""Units of issue 18: the erasure payload on the change feed, cache forgetting, availability
windows, similarity and explanations (pure functions)."""

from __future__ import annotations

import numpy as np

from app.domain.availability import Availability, in_window, is_available
from app.domain.similarity import explain, nearest, unit_rows
from app.services.caches import UserStateCache
from app.services.change_feed import ChangeFeed
from app.store.changes import ERASED_PREFIX, erasure_payloads, parse_erased_payload


def test_erasure_payloads_name_every_user_and_move_their_tokens() -> None:
    users = [f"user-{n:04d}".ljust(200, "x") for n in range(100)]
    payloads = erasure_payloads(users)
    assert len(payloads) > 1 and all(p.startswith(ERASED_PREFIX) for p in payloads)
    assert all(len(p.encode()) < 8000 for p in payloads)
    assert [u for p in payloads for u in parse_erased_payload(p)] == users
    feed = ChangeFeed()
    feed.set_live(True)
    erased: list[list[str] | None] = []
    feed.on_users_erased = erased.append
    before = feed.token(users[0])
    for payload in payloads:
        feed.apply(payload)
    assert feed.token(users[0]) != before
    assert [u for batch in erased if batch for u in batch] == users
    feed.set_live(False)
    feed.set_live(True)  # erasures sent meanwhile were lost: everyone is forgotten
    assert erased[-1] is None


def test_forget_and_clear_drop_entries_and_their_bytes() -> None:
    cache: UserStateCache[str] = UserStateCache(10, 10**6, 2, len)
    cache.put("a", 1, "v", "x" * 100)
    cache.put("b", 1, "v", "y" * 100)
    held = cache.nbytes
    assert cache.forget("a") and not cache.forget("a")
    assert cache.get("a", 1, "v") is None and cache.get("b", 1, "v") == "y" * 100
    assert 0 < cache.nbytes < held
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_availability_windows_and_retired_items() -> None:
    assert in_window((None, None), 5) and in_window((5, 6), 5) and not in_window((5, 6), 6)
    assert not is_available(False, (None, None), 5)
    availability = Availability().updated({"a": (False, (None, None)), "b": (True, (10, 20)),
                                           "c": (True, (None, None))})
    assert availability.unavailable(15) == {"a"}
    assert availability.unavailable(25) == {"a", "b"}
    assert availability.closed_windows(5) == ("b",) and availability.closed_windows(15) == ()
    back = availability.updated({"a": (True, (None, None))}, removed=["c"])
    assert back.unavailable(15) == {"c"} and back.available("a", 15)
    assert Availability().updated({"c": (True, (None, None))}) == Availability()


def test_nearest_and_explanations() -> None:
    table = unit_rows(np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0], [0.0, 0.0]]))
    assert np.allclose(np.linalg.norm(table[:4], axis=1), 1) and not table[4].any()
    positions, sims = nearest(table, 0, 3)
    assert list(positions) == [1, 2, 4] and sims[0] > sims[1]
    positions, _ = nearest(table, 0, 3, exclude=[1])
    assert 1 not in positions and 0 not in positions
    # item 1 is explained by history item 0 (most alike); item 3 by nothing (all dissimilar)
    reasons = explain(table, [1, 3], [0, 2, 0])
    assert [p for p, _ in reasons[0]] == [0, 2] and reasons[1] == []
    assert explain(table, [1], []) == [[]]
