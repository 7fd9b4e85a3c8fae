"""Items: batch upsert and lookup."""

from __future__ import annotations

from fastapi import APIRouter, Path

from app.api.deps import ReadScope, RuntimeDep, SessionDep, WriteScope
from app.core.errors import ApiError
from app.schemas.common import ID_MAX_LENGTH, ID_PATTERN
from app.schemas.items import ItemBatch, ItemOut, UpsertResult
from app.services import history

router = APIRouter(prefix="/items", tags=["items"])


@router.post("", dependencies=[WriteScope], response_model=UpsertResult)
def upsert_items(batch: ItemBatch, runtime: RuntimeDep) -> UpsertResult:
    """Insert or update items by `item_id`; the whole batch or nothing.

    Returns once the batch is committed. Every worker then embeds the items new to its served
    model, and re-embeds those whose text or categories changed, in the background (normally
    within a second for a small batch): until then `POST /recommend` may answer 422 for a new
    item, and a changed item keeps its old topic. A reloaded model embeds the whole catalogue.
    """
    return UpsertResult(upserted=runtime.upsert_items(batch.items))


@router.get("/{item_id}", dependencies=[ReadScope], response_model=ItemOut,
            responses={404: {"description": "Unknown item."}})
def get_item(session: SessionDep,
             item_id: str = Path(max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)) -> ItemOut:
    item = history.get_item(session, item_id=item_id)
    if item is None:
        raise ApiError(404, "not_found", f"item '{item_id}' does not exist")
    return ItemOut.model_validate(item)
