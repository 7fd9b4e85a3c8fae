"""Sizes of what the store keeps, in one place: the table definition (``app/store/models.py``)
sizes its columns with them and the request bodies (``app/schemas``) validate against them.

They are part of the schema, not settings: a wider column needs a migration.
"""

from __future__ import annotations

ID_MAX_LENGTH = 200  # user, item and event ids (and the topic names drift records keep)
TITLE_MAX_LENGTH = 500  # item titles
EVENT_TYPE_MAX_LENGTH = 32  # event types ("view", "rate", ...)
CURSOR_MAX_LENGTH = 200  # opaque paging cursors (app/store/cursors.py)
# Catalogue cursors carry an item id (up to ID_MAX_LENGTH characters) in base64 JSON.
ITEM_CURSOR_MAX_LENGTH = 400
# Ids travel in URL paths (`/users/{user_id}/events`), so they are restricted to characters
# that need no escaping and cannot form path tricks ("../") or SQL/shell metacharacters.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$"
