"""Bodies of the items resource."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from app.domain.limits import TITLE_MAX_LENGTH
from app.schemas.common import EntityId, StorableText

Category = Annotated[StorableText, Field(min_length=1, max_length=100)]


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: EntityId
    title: StorableText = Field(min_length=1, max_length=TITLE_MAX_LENGTH)
    text: StorableText | None = Field(default=None,
                                     description="Free text the item encoder reads.")
    categories: list[Category] = Field(default_factory=list, max_length=50)
    attributes: dict[str, Any] = Field(default_factory=dict)


class ItemBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[ItemIn] = Field(min_length=1)


class UpsertResult(BaseModel):
    upserted: int


class StoredItemFields(BaseModel):
    """What every answer about a stored item carries (read from the row)."""

    model_config = ConfigDict(from_attributes=True)

    item_id: str
    title: str
    text: str | None
    categories: list[str]
    attributes: dict[str, Any]


class ItemOut(StoredItemFields):
    active: bool = Field(default=True, description="false: retired, never recommended")
    available_from: datetime | None = None
    available_until: datetime | None = None
    created_at: datetime
    updated_at: datetime
