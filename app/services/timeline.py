"""A user's topic weights over their event history (`GET /interest-profile/{user_id}/timeline`).

Per event, the short-term interest mix as it stood after that event (`app.domain.timeline`),
with each event's item and topic, for the dashboard's stacked area of a user's interests.
Topics come from the served model, the same way the profile and the drift check get them.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from sqlalchemy.orm import Session

from app.domain.timeline import rolling_topic_shares
from app.schemas.timeline import InterestTimelineOut, TimelinePoint
from app.services.served_model import ServedModel
from app.services.user_history import load_history
from app.store import repository


def interest_timeline(session: Session, model: ServedModel, *, user_id: str, limit: int,
                      window: int) -> InterestTimelineOut:
    """The user's last `limit` events with the topic weights after each (see module doc).

    Events whose item has no topic in the served model are left out of the points and of the
    windows, as the profile leaves them out. `index` is the event's position in the user's
    whole history (0 = first), the numbering drift records' `change_index` uses."""
    # window - 1 extra events so the first returned point's window is full too
    history = load_history(session, user_id, limit + window - 1)
    bundle = model.bundle
    positions, topic_ids = [], []
    for position, item_id in enumerate(history.item_ids):
        topic = bundle.item_topic(item_id)
        if topic is not None:
            positions.append(position)
            topic_ids.append(topic)
    names = bundle.topics.names
    shares = rolling_topic_shares(np.asarray(topic_ids, dtype=np.int64), len(names), window)
    first_shown = max(0, len(history.item_ids) - limit)
    shown = [row for row, position in enumerate(positions) if position >= first_shown]
    shares = shares[shown]
    # Only topics the shown events touch, heaviest overall first (ties by name): a stable
    # order, so stacked areas keep their place and colours from one view to the next.
    mass = shares.sum(axis=0)
    columns = sorted(np.flatnonzero(mass > 0), key=lambda c: (-mass[c], names[c]))
    titles = repository.item_titles(session, {history.item_ids[positions[r]] for r in shown})
    points = []
    for out_row, row in enumerate(shown):
        position = positions[row]
        item_id = history.item_ids[position]
        points.append(TimelinePoint(
            index=history.offset + position,
            event_id=history.event_ids[position],
            item_id=item_id,
            title=titles.get(item_id),
            timestamp=datetime.fromtimestamp(history.timestamps[position], tz=UTC),
            topic=names[topic_ids[row]],
            weights=[float(shares[out_row, c]) for c in columns],
        ))
    return InterestTimelineOut(
        user_id=user_id, model_version=model.version, window=window,
        event_count=history.total, topics=[names[c] for c in columns], points=points)
