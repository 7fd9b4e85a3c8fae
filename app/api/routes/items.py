"""Items: batch upsert and lookup."""

from __future__ import annotations

from fastapi import APIRouter, Path, Request

from app.api.deps import ReadScope, SessionDep, SettingsDep, WriteScope
from app.core.errors import ApiError
from app.ml.catalogue import CatalogueItem, item_text
from app.schemas.common import ID_MAX_LENGTH, ID_PATTERN
from app.schemas.items import ItemBatch, ItemOut, UpsertResult
from app.services import ingestion
from app.store import repository

router = APIRouter(prefix="/items", tags=["items"])


@router.post("", dependencies=[WriteScope], response_model=UpsertResult)
def upsert_items(batch: ItemBatch, session: SessionDep, settings: SettingsDep,
                 request: Request) -> UpsertResult:
    """Insert or update items by `item_id`; the whole batch or nothing.

    Items new to the served model are embedded from their text right after the commit, so
    they can be recommended at once (cold start); a reloaded model embeds the whole catalogue.
    """
    with session.begin():
        count = ingestion.upsert_items(session, batch.items, settings)
    request.app.state.change_feed.everything_changed()  # titles in remembered answers
    request.app.state.models.add_items(
        [CatalogueItem(i.item_id, item_text(i.title, i.text), tuple(i.categories))
         for i in batch.items])
    return UpsertResult(upserted=count)


@router.get("/{item_id}", dependencies=[ReadScope], response_model=ItemOut,
            responses={404: {"description": "Unknown item."}})
def get_item(session: SessionDep,
             item_id: str = Path(max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)) -> ItemOut:
    item = repository.get_item(session, item_id)
    if item is None:
        raise ApiError(404, "not_found", f"item '{item_id}' does not exist")
    return ItemOut.model_validate(item)
