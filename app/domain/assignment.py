"""Which users a challenger model serves: a stable, keyed hash of the user id.

The same user id and salt give the same point in [0, 1) in every process, on every machine
and after every restart, so a user stays on one side of a champion/challenger split for as
long as the salt and the share stay the same; raising the share only adds users to the
challenger's side (a user's point does not move).
"""

from __future__ import annotations

import hashlib

_SCALE = float(1 << 64)


def assignment_point(user_id: str, salt: str) -> float:
    """The user's point in [0, 1): a keyed BLAKE2b (64 bits) of the id, salted by `salt`."""
    key = hashlib.sha256(salt.encode()).digest()  # any salt length (keys hold 64 bytes)
    digest = hashlib.blake2b(user_id.encode(), digest_size=8, key=key,
                             person=b"driftrec-split").digest()
    return int.from_bytes(digest, "big") / _SCALE


def serves_challenger(user_id: str, share: float, salt: str) -> bool:
    """Whether the user falls in the challenger's share (share 0: nobody, 1: everybody)."""
    if share <= 0.0:
        return False
    return assignment_point(user_id, salt) < share
