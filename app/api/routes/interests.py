"""Interest profiles and recommendations of a user, from the served model."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.api.deps import ModelDep, ReadScope, SessionDep, SettingsDep, UserIdPath
from app.core.errors import ApiError
from app.schemas.serving import InterestProfileOut, RecommendationsOut, RecommendRequest
from app.services import interests

router = APIRouter(tags=["interests"])

NOT_FOUND = {404: {"description": "Unknown user."},
             503: {"description": "No model is loaded."}}


def _check_k(k: int, limit: int) -> None:
    if k > limit:
        raise ApiError(422, "validation_error", f"k: at most {limit} items per request",
                       detail=[{"loc": ["query", "k"], "msg": f"k must be <= {limit}",
                                "type": "less_than_equal", "row": None, "field": "k"}])


@router.get("/interest-profile/{user_id}", dependencies=[ReadScope],
            response_model=InterestProfileOut, responses=NOT_FOUND)
def interest_profile(user_id: UserIdPath, session: SessionDep, model: ModelDep,
                     settings: SettingsDep) -> dict[str, Any]:
    """Long- and short-term topic weights, trends, time-of-day contexts and top items."""
    return interests.interest_profile(session, model, user_id, settings)


@router.get("/recommend/{user_id}", dependencies=[ReadScope],
            response_model=RecommendationsOut, responses=NOT_FOUND)
def recommend(user_id: UserIdPath, session: SessionDep, model: ModelDep, settings: SettingsDep,
              k: Annotated[int, Query(ge=1)] = 10, exclude_seen: bool = True,
              drift_aware: bool = True) -> dict[str, Any]:
    """Top-k items for the user's interests now; after a drift, the new interests weigh more
    (`drift_aware=false`: the model's ranking alone, as offline evaluation scores it)."""
    _check_k(k, settings.max_k)
    return interests.recommend_for_user(session, model, user_id, k, exclude_seen, settings,
                                        drift_aware)


@router.post("/recommend", dependencies=[ReadScope], response_model=RecommendationsOut,
             responses={503: {"description": "No model is loaded."}})
def recommend_for_session(body: RecommendRequest, session: SessionDep, model: ModelDep,
                          settings: SettingsDep) -> dict[str, Any]:
    """Recommendations for an anonymous or session-only history (item ids, oldest first)."""
    _check_k(body.k, settings.max_k)
    timestamps = [t.timestamp() for t in body.timestamps] if body.timestamps else None
    return interests.recommend_for_items(session, model, body.recent_item_ids, timestamps,
                                         body.k, body.exclude_seen, settings, body.user_id,
                                         body.drift_aware)
