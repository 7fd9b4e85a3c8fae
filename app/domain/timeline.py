"""A user's topic weights along their event history (plain numpy, no model needed).

The weights at event ``t`` are the short-term profile as it stood right after ``t``: the topic
shares of the last ``window`` events up to and including ``t`` (fewer at the start of the
history), each event counting 1, exactly how ``profiles.build_profile`` computes
``short_term``. The last row is therefore the current short-term profile, and a change of
interests shows as the mix sliding from the old topics to the new ones over ``window`` events.
A count window rather than a time window for the same reason as the profile: users act in
bursts.
"""

from __future__ import annotations

import numpy as np


def rolling_topic_shares(topic_ids: np.ndarray, n_topics: int, window: int) -> np.ndarray:
    """float[n, n_topics]: row ``t`` = shares of each topic among events ``max(0, t-window+1)
    .. t`` (every row sums to 1). ``topic_ids``: int[n], each in ``[0, n_topics)``."""
    if window < 1:
        raise ValueError("window must be at least 1")
    ids = np.asarray(topic_ids, dtype=np.int64).reshape(-1)
    if len(ids) and (ids.min() < 0 or ids.max() >= n_topics):
        raise ValueError(f"topic ids must lie in [0, {n_topics})")
    one_hot = np.zeros((len(ids) + 1, n_topics), dtype=np.float64)
    one_hot[np.arange(1, len(ids) + 1), ids] = 1.0
    cumulative = np.cumsum(one_hot, axis=0)  # row t+1: counts of events 0..t
    ends = np.arange(1, len(ids) + 1)
    starts = np.maximum(ends - window, 0)
    counts = cumulative[ends] - cumulative[starts]
    return counts / (ends - starts)[:, None]
