"""Items: batch upsert and lookup."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from app.api.deps import (
    AdminScope,
    ModelDep,
    ReadScope,
    RuntimeDep,
    SessionDep,
    SettingsDep,
    WriteScope,
)
from app.core.errors import ApiError
from app.domain.limits import ITEM_CURSOR_MAX_LENGTH
from app.schemas.common import ID_MAX_LENGTH, ID_PATTERN, ErrorOut, storable_text
from app.schemas.items import ItemBatch, ItemOut, UpsertResult
from app.schemas.lifecycle import (
    CatalogueItemOut,
    CataloguePage,
    ItemDeleteOut,
    ItemLifecyclePatch,
    SimilarItemsOut,
)
from app.schemas.serving import MAX_K
from app.services import catalogue_listing, history
from app.services.catalogue_writes import InvalidWindow
from app.services.ranking_options import check_k
from app.services.recommender import NotServed

router = APIRouter(prefix="/items", tags=["items"])
ItemIdPath = Annotated[str, Path(max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)]


@router.post("", dependencies=[WriteScope], response_model=UpsertResult)
def upsert_items(batch: ItemBatch, runtime: RuntimeDep) -> UpsertResult:
    """Insert or update items by `item_id`; the whole batch or nothing.

    Returns once the batch is committed. Every worker then embeds the items new to its served
    model, and re-embeds those whose text or categories changed, in the background (normally
    within a second for a small batch): until then `POST /recommend` may answer 422 for a new
    item, and a changed item keeps its old topic. A reloaded model embeds the whole catalogue.
    """
    return UpsertResult(upserted=runtime.items.upsert(batch.items))


@router.get("/{item_id}", dependencies=[ReadScope], response_model=ItemOut,
            responses={404: {"description": "Unknown item."}})
def get_item(session: SessionDep,
             item_id: str = Path(max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)) -> ItemOut:
    item = history.get_item(session, item_id=item_id)
    if item is None:
        raise ApiError(404, "not_found", f"item '{item_id}' does not exist")
    return ItemOut.model_validate(item)


# ------------------------------------------------------------------ lifecycle (issue 18)
@router.get("", dependencies=[ReadScope], response_model=CataloguePage)
def list_items(
    session: SessionDep,
    active: Annotated[bool | None, Query(description="true: only items that may be "
                                         "recommended now; false: only those that may not")
                      ] = None,
    category: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(min_length=1, max_length=ITEM_CURSOR_MAX_LENGTH)
                      ] = None,
) -> CataloguePage:
    """The catalogue by item_id; follow `next_cursor` for the next page."""
    if category is not None:
        try:
            storable_text(category)
        except ValueError as error:
            raise ApiError(422, "validation_error", f"category: {error}",
                           detail=[{"loc": ["query", "category"], "msg": str(error),
                                    "type": "value_error", "row": None, "field": "category"}]
                           ) from error
    now = datetime.now(UTC)
    # a cursor the API did not return: InvalidCursor, a 422 naming `cursor` (app.core.errors)
    page, next_cursor = catalogue_listing.list_catalogue(session, limit, now, active,
                                                         category, cursor)
    return CataloguePage(items=[CatalogueItemOut.model_validate(i) for i in page],
                         next_cursor=next_cursor)


@router.patch("/{item_id}", dependencies=[WriteScope], response_model=CatalogueItemOut,
              responses={404: {"description": "Unknown item."}})
def patch_item(body: ItemLifecyclePatch, runtime: RuntimeDep, item_id: ItemIdPath
               ) -> CatalogueItemOut:
    """Retire an item (`{"active": false}`), bring it back (`true`), or set the window it may
    be recommended in (`available_from` / `available_until`; null clears a bound).

    Every worker stops recommending a retired item (or one outside its window) within about
    a second; its past events stay in histories and still count for profiles and drift."""
    try:
        item = runtime.items.update_lifecycle(item_id, body.changes())
    except InvalidWindow as error:
        raise ApiError(422, "validation_error", str(error),
                       detail=[{"loc": ["body", "available_until"], "msg": str(error),
                                "type": "invalid_window", "row": None,
                                "field": "available_until"}]) from error
    if item is None:
        raise ApiError(404, "not_found", f"item '{item_id}' does not exist")
    return CatalogueItemOut.model_validate(
        catalogue_listing.catalogue_entry(item, datetime.now(UTC)))


@router.delete("/{item_id}", dependencies=[AdminScope], response_model=ItemDeleteOut,
               responses={404: {"description": "Unknown item."},
                          409: {"model": ErrorOut,
                                "description": "Events reference the item: retire it "
                                               "(`?retire=true`) instead."}})
def delete_item(runtime: RuntimeDep, item_id: ItemIdPath, retire: bool = False
                ) -> ItemDeleteOut:
    """Delete an item no event references. While events reference it the answer is 409
    (deleting it would rewrite users' histories, and training reads them); with
    `retire=true` it is retired instead (as `PATCH {"active": false}`)."""
    outcome = runtime.items.delete(item_id, retire)
    if outcome is None:
        raise ApiError(404, "not_found", f"item '{item_id}' does not exist")
    if outcome == "in_use":
        raise ApiError(409, "item_in_use", f"events reference item '{item_id}'; retire it "
                       "with ?retire=true (its events stay in the histories)")
    return ItemDeleteOut(item_id=item_id, deleted=outcome == "deleted",
                         retired=outcome == "retired")


@router.get("/{item_id}/similar", dependencies=[ReadScope], response_model=SimilarItemsOut,
            responses={404: {"description": "Unknown item, or not in the served catalogue."},
                       503: {"description": "No model is loaded."}})
def similar(item_id: ItemIdPath, session: SessionDep, model: ModelDep, settings: SettingsDep,
            k: Annotated[int, Query(ge=1, le=MAX_K)] = 10) -> dict[str, Any]:
    """The `k` items most like this one in the served model (its learned item table; for an
    item it has not trained on, the text encoder's embeddings), retired items left out, each
    with its topic. Answered from memory but for the titles."""
    check_k(k, settings.max_k)
    try:
        return model.similar(session, item_id, k)
    except NotServed as error:
        raise ApiError(404, "not_found", str(error)) from error
