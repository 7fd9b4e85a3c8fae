"""Interest profiles and recommendations of a user, from the served model."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from app.api.deps import (
    BodySentDep,
    ModelDep,
    ReadScope,
    RuntimeDep,
    SessionDep,
    SettingsDep,
    UserIdPath,
)
from app.core.exceptions import FieldProblem, InvalidInput
from app.schemas.common import Timestamp
from app.schemas.serving import (
    AT_HELP,
    MAX_K,
    InterestProfileOut,
    RecommendationsOut,
    RecommendRequest,
)
from app.schemas.timeline import InterestTimelineOut
from app.services import interests, timeline

router = APIRouter(tags=["interests"])

NOT_FOUND = {404: {"description": "Unknown user."},
             503: {"description": "No model is loaded."}}


def _check_k(k: int, limit: int, where: str = "query") -> None:
    """The operator's `max_k` (the schema's bound is MAX_K; a deployment may lower it)."""
    if k > limit:
        raise InvalidInput([FieldProblem((where, "k"), f"k must be <= {limit}",
                                         "less_than_equal", None, "k")],
                           f"k: at most {limit} items per request")


@router.get("/interest-profile/{user_id}", dependencies=[ReadScope],
            response_model=InterestProfileOut, responses=NOT_FOUND)
def interest_profile(user_id: UserIdPath, session: SessionDep, model: ModelDep,
                     settings: SettingsDep) -> InterestProfileOut:
    """Long- and short-term topic weights, trends, time-of-day contexts and top items."""
    return interests.interest_profile(session, model, user_id=user_id, settings=settings)


@router.get("/recommend/{user_id}", dependencies=[ReadScope],
            response_model=RecommendationsOut, responses=NOT_FOUND)
async def recommend(user_id: UserIdPath, runtime: RuntimeDep, champion: ModelDep,
                    settings: SettingsDep, shown: BodySentDep,
                    k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
                    exclude_seen: bool = True, drift_aware: bool = True,
                    at: Annotated[Timestamp | None, Query(description=AT_HELP)] = None,
                    impression: Annotated[bool, Query(
                        description="false: a preview, not shown to the user (e.g. the "
                        "dashboard's user view): no impression is recorded")] = True
                    ) -> RecommendationsOut:
    """Top-k items for the user's interests now (or at `at`); after a drift, the new
    interests weigh more (`drift_aware=false`: the model's ranking alone, as offline
    evaluation scores it). With a challenger, its share of users (a stable hash of the id)
    gets its ranking; `model_version` says which version answered, and the response's
    impression is recorded under `recommendation_id` (unless `impression=false`)."""
    _check_k(k, settings.max_k)
    when = interests.request_time(at)
    model, role = runtime.model_for(user_id, champion)
    # async, and no session dependency: a user whose events have not changed since the last
    # answer is served from memory on the event loop, without a thread hop or a query
    feed = runtime.change_feed
    response = interests.remembered_recommendations(
        model, feed=feed, user_id=user_id, k=k, exclude_seen=exclude_seen,
        drift_aware=drift_aware, settings=settings, at=when)
    if response is None:

        def compute() -> RecommendationsOut:
            with runtime.session_factory() as session:
                return interests.recommend_for_user(
                    session, model, user_id=user_id, k=k, exclude_seen=exclude_seen,
                    drift_aware=drift_aware, settings=settings, feed=feed, at=when)

        response = await run_in_threadpool(compute)
    runtime.recommendation_served(response, k, role, shown and impression)
    return response


@router.post("/recommend", dependencies=[ReadScope], response_model=RecommendationsOut,
             responses={503: {"description": "No model is loaded."}})
def recommend_for_session(body: RecommendRequest, session: SessionDep, champion: ModelDep,
                          runtime: RuntimeDep, settings: SettingsDep) -> RecommendationsOut:
    """Recommendations for an anonymous or session-only history (item ids, oldest first).
    With a `user_id`, the challenger split applies as on `GET /recommend/{user_id}`, and the
    impression is recorded when the store knows the user."""
    _check_k(body.k, settings.max_k, "body")
    model, role = runtime.model_for(body.user_id, champion)
    timestamps = [t.timestamp() for t in body.timestamps] if body.timestamps else None
    response = interests.recommend_for_items(
        session, model, item_ids=body.recent_item_ids, timestamps=timestamps, k=body.k,
        exclude_seen=body.exclude_seen, drift_aware=body.drift_aware, settings=settings,
        user_id=body.user_id, at=None if body.at is None else body.at.timestamp())
    runtime.recommendation_served(response, body.k, role)
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
    return timeline.interest_timeline(session, model, user_id=user_id, limit=limit,
                                      window=window or settings.short_term_events)
