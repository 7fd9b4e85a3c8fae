"""The drift dashboard: two HTML pages and their static files.

The pages only hold layout and scripts; the scripts fetch every figure from the public JSON
API on the same origin, so the dashboard shows exactly what API clients get. Pages need the
read scope like the API. A browser cannot add a Bearer header to a page navigation, so a
refused page asks for HTTP Basic credentials (any user name, the API key as the password):
the browser then sends them on the page's same-origin fetch() calls too, and `require_scope`
accepts them. Static files (our scripts and styles, plotly.js) hold no data and are public.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException

from app.api.deps import UserIdPath, require_scope
from app.core.errors import ApiError
from app.dashboard import assets

router = APIRouter(prefix="/dashboard", include_in_schema=False)

REALM = 'Basic realm="DriftRec", charset="UTF-8"'
# Everything from this origin, nothing from anywhere else. plotly.js styles its elements
# inline and draws with data: images, hence those two allowances.
PAGE_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; "
                                "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
                                "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                                "form-action 'self'"),
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_read_scope = require_scope("read")


async def page_reader(request: Request) -> None:
    """The read scope, answering a missing or wrong key with a Basic challenge so the
    browser asks for credentials (a 403, wrong scope, is not retried with others)."""
    try:
        await _read_scope(request)
    except ApiError as error:
        if error.status != 401:
            raise
        raise HTTPException(401, error.message, headers={"WWW-Authenticate": REALM}) from error


PageReader = Depends(page_reader)


def _page(name: str) -> HTMLResponse:
    return HTMLResponse(assets.page(name), headers=PAGE_HEADERS)


@router.get("", dependencies=[PageReader], response_class=HTMLResponse)
def overview() -> HTMLResponse:
    """Drift rate over time, top topic transitions, the latest drift records."""
    return _page("overview")


@router.get("/users/{user_id}", dependencies=[PageReader], response_class=HTMLResponse)
def user_view(user_id: UserIdPath) -> HTMLResponse:
    """One user's topic timeline with change points, profile and recommendations (the
    script reads the user id from the path)."""
    return _page("user")


@router.get("/static/{name}")
def static_file(name: str, request: Request,
                v: Annotated[str | None, Query(max_length=64)] = None) -> Response:
    """A dashboard asset. With the current digest as `v` it may be cached for good."""
    asset = assets.assets().get(name)
    if asset is None:
        raise ApiError(404, "not_found", f"no dashboard asset '{name}'")
    etag = f'"{asset.digest}"'
    headers = {
        "ETag": etag, "Vary": "Accept-Encoding", "X-Content-Type-Options": "nosniff",
        "Cache-Control": ("public, max-age=31536000, immutable" if v == asset.digest
                          else "public, max-age=0, must-revalidate"),
    }
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    body = asset.body
    if asset.gzipped is not None and "gzip" in request.headers.get("accept-encoding", ""):
        body, headers["Content-Encoding"] = asset.gzipped, "gzip"
    return Response(body, media_type=asset.media_type, headers=headers)
