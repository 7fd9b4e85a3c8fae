"""Sizes of what the store keeps, in one place: the table definition (``app/store/models.py``)
sizes its columns with them and the request bodies (``app/schemas``) validate against them.

They are part of the schema, not settings: a wider column needs a migration.
"""

from __future__ import annotations

ID_MAX_LENGTH = 200  # user, item and event ids (and the topic names drift records keep)
TITLE_MAX_LENGTH = 500  # item titles
EVENT_TYPE_MAX_LENGTH = 32  # event types ("view", "rate", ...)
CURSOR_MAX_LENGTH = 200  # opaque paging cursors (app/store/cursors.py)
