"""Interest profiles and recommendations of a user, from the served model."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import (
    BodySentDep,
    ModelDep,
    RankingOptionsDep,
    ReadScope,
    RuntimeDep,
    ServedForUserDep,
    SessionDep,
    SettingsDep,
    UserIdPath,
    served_for,
)
from app.schemas.serving import InterestProfileOut, RecommendationsOut, RecommendRequest
from app.schemas.timeline import InterestTimelineOut
from app.services.ranking_options import RankingOptions

router = APIRouter(tags=["interests"])

NOT_FOUND = {404: {"description": "Unknown user."},
             503: {"description": "No model is loaded."}}


@router.get("/interest-profile/{user_id}", dependencies=[ReadScope],
            response_model=InterestProfileOut, responses=NOT_FOUND)
def interest_profile(user_id: UserIdPath, session: SessionDep, model: ModelDep
                     ) -> InterestProfileOut:
    """Long- and short-term topic weights, trends, time-of-day contexts and top items."""
    return model.profile(session, user_id)


@router.get("/recommend/{user_id}", dependencies=[ReadScope],
            response_model=RecommendationsOut, responses=NOT_FOUND)
async def recommend(user_id: UserIdPath, served: ServedForUserDep, options: RankingOptionsDep,
                    runtime: RuntimeDep, shown: BodySentDep,
                    impression: Annotated[bool, Query(
                        description="false: a preview, not shown to the user (e.g. the "
                        "dashboard's user view): no impression is recorded")] = True
                    ) -> RecommendationsOut:
    """Top-k items for the user's interests now (or at `at`); after a drift, the new
    interests weigh more (`drift_aware=false`: the model's ranking alone, as offline
    evaluation scores it). With a challenger, its share of users (a stable hash of the id)
    gets its ranking; `model_version` says which version answered, and the response's
    impression is recorded under `recommendation_id` (unless `impression=false`)."""
    # async, and no session dependency: a user whose events have not changed since the last
    # answer is served from memory on the event loop, without a thread hop or a query
    response = await served.recommender.recommend(user_id, options)
    runtime.recommendation_served(response, options.k, served.role, shown and impression)
    return response


@router.post("/recommend", dependencies=[ReadScope], response_model=RecommendationsOut,
             responses={503: {"description": "No model is loaded."}})
async def recommend_for_session(body: RecommendRequest, champion: ModelDep,
                                runtime: RuntimeDep, settings: SettingsDep
                                ) -> RecommendationsOut:
    """Recommendations for an anonymous or session-only history (item ids, oldest first).
    With a `user_id`, the challenger split applies as on `GET /recommend/{user_id}`, and the
    impression is recorded when the store knows the user."""
    # async, and no session dependency: one thread hop for the ranking (a sync handler with a
    # session took four: the session's opening and closing, the handler, its response)
    options = RankingOptions.of_request(body, settings.max_k, "body")
    served = served_for(runtime, champion, body.user_id)
    timestamps = [t.timestamp() for t in body.timestamps] if body.timestamps else None
    response = await served.recommender.recommend_items(
        body.recent_item_ids, timestamps, options, user_id=body.user_id)
    runtime.recommendation_served(response, body.k, served.role)
    return response


@router.get("/interest-profile/{user_id}/timeline", dependencies=[ReadScope],
            response_model=InterestTimelineOut, responses=NOT_FOUND)
def interest_timeline(user_id: UserIdPath, session: SessionDep, model: ModelDep,
                      settings: SettingsDep,
                      limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
                      window: Annotated[int | None, Query(ge=1, le=500)] = None
                      ) -> InterestTimelineOut:
    """Topic weights after each of the user's last `limit` events: the shares of the last
    `window` events (default: the short-term profile's window), oldest first."""
    return model.timeline(session, user_id, limit, window or settings.short_term_events)
