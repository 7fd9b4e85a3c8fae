"""Bodies of erasure, item lifecycle, catalogue listing and similar items."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.schemas.common import Timestamp
from app.schemas.items import StoredItemFields


class ErasureOut(BaseModel):
    user_id: str
    events_removed: int
    drift_records_removed: int
    drift_checks_removed: int
    impressions_removed: int


class ItemLifecyclePatch(BaseModel):
    """Retire an item or bring it back, or set the window it may be recommended in."""

    model_config = ConfigDict(extra="forbid")

    # strict: "no", "false", 0 are not booleans (a typo must not retire an item)
    active: bool | None = Field(default=None, strict=True,
                                description="false: retired, never recommended")
    available_from: Timestamp | None = Field(
        default=None, description="recommended from this time on (null: no start)")
    available_until: Timestamp | None = Field(
        default=None, description="recommended until this time, exclusive (null: no end)")

    @model_validator(mode="after")
    def _consistent(self) -> ItemLifecyclePatch:
        if not self.model_fields_set:
            raise ValueError("give at least one of active, available_from, available_until")
        if "active" in self.model_fields_set and self.active is None:
            raise ValueError("active must be true or false")
        start, end = self.available_from, self.available_until
        if start is not None and end is not None and end <= start:
            raise ValueError("available_until must be after available_from")
        return self

    def changes(self) -> dict[str, Any]:
        """The fields the body sets (an explicit null clears a window bound)."""
        return {name: getattr(self, name) for name in self.model_fields_set}


class ItemDeleteOut(BaseModel):
    item_id: str
    deleted: bool = Field(description="the row was removed (no event referenced it)")
    retired: bool = Field(description="the item was retired instead (retire=true and events "
                          "reference it)")


class CatalogueItemOut(StoredItemFields):
    active: bool
    available_from: datetime | None
    available_until: datetime | None
    available_now: bool = Field(description="active and inside its window now")
    created_at: datetime
    updated_at: datetime


class CataloguePage(BaseModel):
    items: list[CatalogueItemOut]
    next_cursor: str | None


class SimilarItem(BaseModel):
    item_id: str
    title: str | None
    similarity: float = Field(description="cosine similarity of the two items' "
                              "representations in the served model")
    topic: str


class SimilarItemsOut(BaseModel):
    item_id: str
    model_version: str
    source: str = Field(description="'item_table': the model's learned item representations; "
                        "'text': text embeddings (the item has no learned row)")
    items: list[SimilarItem]
