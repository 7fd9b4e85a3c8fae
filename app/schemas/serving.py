"""Bodies of the model-backed endpoints: profiles, drift, recommendations, models."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.schemas.common import EntityId, Timestamp

MAX_K = 100  # the most items one recommendation may ask for (`max_k` may lower it)
AT_HELP = ("the request time (default: now): a model whose time bias reads it ranks by the "
           "time from each event to it; a time before the last event counts as that event's")


class TopicWeight(BaseModel):
    topic: str
    weight: float


class TopicTrendOut(BaseModel):
    topic: str
    trend: Literal["rising", "declining", "stable", "new", "dormant"]
    change: float = Field(description="short-term weight minus long-term weight")


class ProfileItem(BaseModel):
    item_id: str
    title: str | None
    topic: str


class InterestProfileOut(BaseModel):
    user_id: str
    model_version: str
    as_of: datetime | None = Field(description="time of the user's last event")
    event_count: int
    enough_events: bool
    long_term: list[TopicWeight]
    short_term: list[TopicWeight]
    trends: list[TopicTrendOut]
    contexts: dict[str, list[TopicWeight]]
    top_items: list[ProfileItem]


class ChangePointOut(BaseModel):
    event_id: str
    timestamp: datetime
    index: int = Field(description="position of the event in the user's history (0 = first)")


class DriftOut(BaseModel):
    user_id: str
    model_version: str
    drift_detected: bool
    score: float = Field(description="the change point's drift probability; without one, the "
                         "highest probability among events that may alarm (after min_events)")
    threshold: float
    kind: Literal["abrupt", "gradual", "recurring", "none"]
    change_point: ChangePointOut | None
    from_interests: list[TopicWeight]
    to_interests: list[TopicWeight]
    record_id: int | None
    event_count: int
    enough_events: bool
    min_events: int


class DriftRecordOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    user_id: str
    detected_at: datetime
    model_version: str
    score: float
    threshold: float
    kind: str
    change_event_id: str
    change_at: datetime
    change_index: int
    interests_before: dict[str, float]
    interests_after: dict[str, float]
    from_topic: str | None
    to_topic: str | None


class DriftHistoryOut(BaseModel):
    records: list[DriftRecordOut]
    next_cursor: str | None


class SummaryBucket(BaseModel):
    bucket_start: datetime
    users_checked: int
    drifts: int
    drift_rate: float | None


class TopicTransition(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_topic: str = Field(alias="from", serialization_alias="from")
    to_topic: str = Field(alias="to", serialization_alias="to")
    count: int


class DriftSummaryOut(BaseModel):
    bucket: Literal["hour", "day", "week"]
    since: datetime | None
    until: datetime | None
    buckets: list[SummaryBucket]
    transitions: list[TopicTransition]


class Reason(BaseModel):
    """An item of the user's recent history that the recommended item is most like."""

    item_id: str
    title: str | None
    similarity: float = Field(description="cosine similarity of the two items in the "
                              "served model's item table")


class RecommendedItem(BaseModel):
    item_id: str
    title: str | None
    score: float
    topic: str = Field(description="the interest (topic) the item serves")
    because: list[Reason] = Field(
        default_factory=list, description="the one or two items of the user's recent history "
        "(the last DRIFTREC_SHORT_TERM_EVENTS events) most like this one: why it is "
        "recommended")


class RecommendationsOut(BaseModel):
    user_id: str | None
    model_version: str = Field(description="the registered version that ranked these items "
                               "(the champion, or the challenger for its share of users)")
    recommendation_id: UUID = Field(description="this response's id: its impression is "
                                    "stored under it (online metrics)")
    drift_aware: bool = Field(description="whether a recent drift changed the ranking")
    items: list[RecommendedItem]


class RankingParams(BaseModel):
    """What a request may ask of a ranking: the query parameters of `GET /recommend/{user_id}`
    and the same fields of the `POST /recommend` body, declared once
    (`app.services.ranking_options.RankingOptions` is the typed value made from them)."""

    k: int = Field(default=10, ge=1, le=MAX_K)
    exclude_seen: bool = True
    drift_aware: bool = Field(default=True, description="false: the model's ranking alone, "
                              "exactly as offline evaluation scores it")
    at: Timestamp | None = Field(default=None, description=AT_HELP)


class RecommendRequest(RankingParams):
    model_config = ConfigDict(extra="forbid")

    recent_item_ids: list[EntityId] = Field(min_length=1, max_length=1000,
                                            description="oldest first")
    timestamps: list[Timestamp] | None = Field(
        default=None, description="one per item; without them events are taken as one "
        "minute apart, ending now")
    user_id: EntityId | None = None

    @model_validator(mode="after")
    def _aligned(self) -> RecommendRequest:
        if self.timestamps is not None and len(self.timestamps) != len(self.recent_item_ids):
            raise ValueError("timestamps must have one entry per recent_item_ids entry")
        return self


class ChallengerInfo(BaseModel):
    alias: str
    share: float = Field(description="share of users served the challenger while it is "
                         "served (DRIFTREC_CHALLENGER_SHARE)")
    status: Literal["serving", "missing", "failed", "loading"] = Field(
        description="serving: its share gets it; missing: no version has the alias; failed: "
        "the version it points at was refused; loading: not tried yet. Anything but serving: "
        "every user gets the champion")
    version: str | None
    device: str | None
    loaded_at: datetime | None
    last_checked_at: datetime | None
    last_reload_error: str | None
    reload_failures: int


class ModelInfo(BaseModel):
    name: str
    version: str | None
    alias: str
    device: str | None
    loaded_at: datetime | None
    metrics: dict[str, Any]
    last_checked_at: datetime | None
    last_reload_error: str | None
    reload_failures: int
    challenger: ChallengerInfo | None = Field(
        default=None, description="the challenger beside the champion (null: off)")


class PromotionOut(BaseModel):
    champion: str = Field(description="the version the champion alias points at now")
    previous_champion: str | None
    challenger_alias_removed: bool = Field(description="the challenger alias was deleted: "
                                           "the experiment is over")


class Interval(BaseModel):
    low: float
    high: float


class OnlineBucket(BaseModel):
    bucket_start: datetime
    impressions: int
    hits: int
    hit_rate: float | None
    hit_rate_ci: Interval | None
    mrr: float | None


class VersionOnlineMetrics(BaseModel):
    model_version: str
    role: Literal["champion", "challenger"] | None = Field(
        description="what the version is served as now (null: neither)")
    impressions: int = Field(description="settled impressions: their window has closed")
    pending: int = Field(description="impressions whose window is still open: not counted")
    hits: int
    hit_rate: float | None = Field(description="hits / impressions (hit rate@k)")
    hit_rate_ci: Interval | None = Field(description="Wilson score interval")
    mrr: float | None = Field(description="mean reciprocal rank@k (0 for a miss)")
    mrr_ci: Interval | None = Field(description="normal-approximation interval")
    series: list[OnlineBucket]


class OnlineMetricsOut(BaseModel):
    since: datetime | None
    until: datetime | None
    k: int
    bucket: Literal["hour", "day", "week"]
    event_window: int = Field(description="next events counted per impression")
    time_window_seconds: float = Field(description="how long after an impression they count")
    confidence: float
    versions: list[VersionOnlineMetrics]


class ReloadOut(BaseModel):
    changed: bool
    version: str | None
    error: str | None
