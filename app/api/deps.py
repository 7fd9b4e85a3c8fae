"""Dependencies routes take what they need from: settings, a DB session, the caller's key."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import ApiError
from app.core.metrics import Metrics
from app.core.middleware import HEAD_SCOPE_KEY
from app.core.security import ApiKey, authenticate
from app.schemas.common import ID_MAX_LENGTH, ID_PATTERN
from app.schemas.serving import RankingParams
from app.services.ranking_options import RankingOptions, request_time
from app.services.recommender import Recommender
from app.services.runtime import Role, ServingRuntime
from app.services.served_model import ModelUnavailable


# The only reader of `app.state` (routers take these typed dependencies instead): the settings,
# the metrics and the API keys are set by `create_app`, the runtime by the lifespan.
# Dependencies without I/O are `async def`: FastAPI runs sync ones in the thread pool, a hop
# per dependency per request that cost more than the work itself.
async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_runtime(request: Request) -> ServingRuntime:
    return request.app.state.runtime


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.runtime.session_factory() as session:
        yield session


async def get_model(request: Request) -> Recommender:
    """The champion's served version, taken once per request (a reload never changes it
    mid-request)."""
    try:
        return request.app.state.runtime.models.current
    except ModelUnavailable as error:
        raise ApiError(503, "model_unavailable",
                       f"no model is being served: {error}. Train and promote one with "
                       "`python -m training train --register --promote`") from error


async def body_is_sent(request: Request) -> bool:
    """False for a HEAD request answered as its GET (the body never leaves the server)."""
    return not request.scope.get(HEAD_SCOPE_KEY, False)


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
RuntimeDep = Annotated[ServingRuntime, Depends(get_runtime)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
SessionDep = Annotated[Session, Depends(get_session)]
ModelDep = Annotated[Recommender, Depends(get_model)]
BodySentDep = Annotated[bool, Depends(body_is_sent)]
UserIdPath = Annotated[str, Path(max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)]


@dataclass(frozen=True, slots=True)
class ServedFor:
    """The served version that answers one user (the challenger for its share of users,
    while one is served), and its role."""

    recommender: Recommender
    role: Role


def served_for(runtime: ServingRuntime, champion: Recommender, user_id: str | None
               ) -> ServedFor:
    return ServedFor(*runtime.model_for(user_id, champion))


async def get_served_for_user(runtime: RuntimeDep, champion: ModelDep, user_id: UserIdPath
                              ) -> ServedFor:
    return served_for(runtime, champion, user_id)


async def get_ranking_options(settings: SettingsDep,
                              params: Annotated[RankingParams, Query()]) -> RankingOptions:
    """A ranking request's options from its query, `k` checked against `max_k`; the request
    time is fixed here (now, unless the query gives one)."""
    return RankingOptions.of_request(params, settings.max_k, at=request_time(params.at))


ServedForUserDep = Annotated[ServedFor, Depends(get_served_for_user)]
RankingOptionsDep = Annotated[RankingOptions, Depends(get_ranking_options)]


def presented_key(header: str) -> str | None:
    """The API key in an Authorization header: `Bearer <key>`, or HTTP Basic whose password is
    the key (any user name), which is what a browser can send for a page (the dashboard)."""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if not token:
        return None
    if scheme.lower() == "bearer":
        return token
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(token, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, separator, password = decoded.partition(":")
        return password if separator and password else None
    return None


def require_scope(scope: str) -> Callable[[Request], Awaitable[ApiKey | None]]:
    """A dependency that lets the call through only with a key holding `scope` (or admin)."""

    async def check(request: Request) -> ApiKey | None:
        keys: list[ApiKey] = request.app.state.api_keys
        if not keys:
            return None  # auth is off: the server listens on 127.0.0.1 only
        token = presented_key(request.headers.get("authorization", ""))
        if token is None:
            raise ApiError(401, "unauthorized",
                           "missing API key: send 'Authorization: Bearer <key>'")
        key = authenticate(keys, token)
        if key is None:
            raise ApiError(401, "unauthorized", "invalid API key")
        if not key.allows(scope):
            raise ApiError(403, "forbidden", f"this API key lacks the '{scope}' scope")
        return key

    return check


ReadScope = Depends(require_scope("read"))
WriteScope = Depends(require_scope("write"))
AdminScope = Depends(require_scope("admin"))
