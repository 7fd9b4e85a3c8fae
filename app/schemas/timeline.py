"""Body of `GET /interest-profile/{user_id}/timeline`."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class TimelinePoint(BaseModel):
    index: int = Field(description="position of the event in the user's history (0 = first), "
                       "as in drift records' change_index")
    event_id: str
    item_id: str
    title: str | None
    timestamp: datetime
    topic: str = Field(description="the topic of the event's item")
    weights: list[float] = Field(description="topic weights after this event, one per entry "
                                 "of `topics`, summing to 1")


class InterestTimelineOut(BaseModel):
    user_id: str
    model_version: str
    window: int = Field(description="events per short-term window")
    event_count: int = Field(description="all the user's events")
    topics: list[str] = Field(description="topics present in the timeline, heaviest first")
    points: list[TimelinePoint] = Field(description="oldest first")
