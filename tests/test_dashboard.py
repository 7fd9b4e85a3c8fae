"""The drift dashboard, the backfilling drift scan, the timeline endpoint and Basic auth.

The browser tests run the real service (uvicorn on 127.0.0.1, API keys configured) on a
scratch PostgreSQL database holding the tiny-user MovieLens subset and the tiny model, and
drive Debian's /usr/bin/chromium headless through Playwright (`make test` installs chromium
where it is missing; Playwright never downloads a browser).
"""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.domain.timeline import rolling_topic_shares
from app.main import create_app
from app.services.drift_scan import all_user_ids, scan_users
from app.store import drift_records
from app.store.db import make_engine, make_session_factory, transaction
from tests.conftest import TinyModel, tiny_model_database, tiny_users_data
from tests.live_server import free_port
from training.data.importer import import_movielens

KEYS = "reader-key:read;writer-key:write"
CHROMIUM = os.environ.get("DRIFTREC_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PORTS = range(18100, 18200)


def _basic(password: str, user: str = "dashboard") -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


# ------------------------------------------------------------------------ pure functions
def test_rolling_topic_shares_is_the_short_term_window_at_each_event() -> None:
    shares = rolling_topic_shares(np.array([0, 0, 1, 2, 2]), n_topics=3, window=2)
    expected = [[1, 0, 0], [1, 0, 0], [0.5, 0.5, 0], [0, 0.5, 0.5], [0, 0, 1]]
    assert shares.tolist() == expected
    # A window longer than the history: the cumulative shares.
    assert rolling_topic_shares(np.array([1, 0, 1]), 2, 10)[-1].tolist() == [1 / 3, 2 / 3]
    assert rolling_topic_shares(np.array([], dtype=np.int64), 2, 3).shape == (0, 2)
    with pytest.raises(ValueError):
        rolling_topic_shares(np.array([3]), 3, 2)
    with pytest.raises(ValueError):
        rolling_topic_shares(np.array([0]), 3, 0)


# -------------------------------------------------------------------- store: backfill stamps
def test_backfilled_times_place_checks_and_records_in_their_buckets(
        factory: sessionmaker[Session]) -> None:
    as_of = datetime(1998, 3, 4, 17, 5, tzinfo=UTC)
    with transaction(factory) as session:
        record, _ = drift_records.record_drift(
            session, user_id="u1", change_event_id="e1",
            change_at=as_of - timedelta(days=2), change_index=11, score=0.9, threshold=0.5,
            kind="abrupt", model_version="1", interests_before={"Drama": 1.0},
            interests_after={"Comedy": 1.0}, detected_at=as_of)
        check = drift_records.record_check(session, user_id="u1", model_version="1",
                                           drift_detected=True, record_id=record.id,
                                           checked_at=as_of)
        live = drift_records.record_check(session, user_id="u2", model_version="1",
                                          drift_detected=False)
    assert record.detected_at == as_of and check.checked_at == as_of
    assert abs(live.checked_at - datetime.now(UTC)) < timedelta(minutes=5)  # the wall clock
    with transaction(factory) as session:
        summary = drift_records.drift_summary(session, None, None, "day")
        assert summary[0] == {"bucket_start": datetime(1998, 3, 4, tzinfo=UTC),
                              "users_checked": 1, "drifts": 1, "drift_rate": 1.0}
        assert drift_records.user_ids_to_scan(session) == ["u1", "u2", "u3"]
        assert drift_records.user_ids_to_scan(session, unchecked_only=True) == ["u3"]


# ------------------------------------------------------------------------------ Basic auth
def test_dashboard_asks_browsers_for_basic_credentials(settings: Settings) -> None:
    keyed = settings.model_copy(update={"api_keys": KEYS})
    with TestClient(create_app(keyed)) as client:
        refused = client.get("/dashboard")
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
        assert refused.headers["www-authenticate"] == 'Basic realm="DriftRec", charset="UTF-8"'
        assert client.get("/dashboard/users/u1").headers["www-authenticate"].startswith("Basic")
        wrong = client.get("/dashboard", headers=_basic("nope"))
        assert wrong.status_code == 401 and "www-authenticate" in wrong.headers
        assert client.get("/dashboard", headers=_basic("writer-key")).status_code == 403

        page = client.get("/dashboard", headers=_basic("reader-key"))
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'id="chart-drift-rate"' in page.text and 'id="chart-transitions"' in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        user_page = client.get("/dashboard/users/u1", headers=_basic("reader-key", "anyone"))
        assert user_page.status_code == 200 and 'id="chart-timeline"' in user_page.text
        assert client.get("/dashboard/users/..%2Fx", headers=_basic("reader-key")
                          ).status_code in (404, 422)

        # The API takes the same Basic credentials (what the page's fetch() calls send) ...
        summary = client.get("/drift/summary", headers=_basic("reader-key"))
        assert summary.status_code == 200 and summary.json()["buckets"] == []
        api_refused = client.get("/drift/summary", headers=_basic("nope"))
        # ... and challenges with Bearer (RFC 6750), which no browser answers with a dialog
        assert api_refused.status_code == 401
        assert api_refused.headers["www-authenticate"] == 'Bearer realm="DriftRec"'
        assert client.get("/drift/summary", headers={"Authorization": "Basic %%%"}
                          ).status_code == 401
        assert client.post("/items", json={"items": [{"item_id": "m1", "title": "Heat"}]},
                           headers=_basic("reader-key")).status_code == 403
        # ... and Bearer works as before.
        bearer = client.get("/drift/summary", headers={"Authorization": "Bearer reader-key"})
        assert bearer.status_code == 200
        assert client.get("/drift/summary").status_code == 401


def test_dashboard_assets_are_served_locally_with_cache_headers(client: TestClient) -> None:
    page = client.get("/dashboard").text  # auth is off without keys
    src = next(part.split('"')[1] for part in page.split("<script ") if "plotly" in part)
    assert src.startswith("/dashboard/static/plotly.min.js?v=")
    plotly = client.get(src)
    assert plotly.status_code == 200 and plotly.headers["content-encoding"] == "gzip"
    assert plotly.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert plotly.headers["content-type"].startswith("text/javascript")
    assert len(plotly.content) > 3_000_000 and b"plotly.js" in plotly.content[:1000]
    again = client.get(src, headers={"If-None-Match": plotly.headers["etag"]})
    assert again.status_code == 304 and not again.content
    unversioned = client.get("/dashboard/static/overview.js")
    assert unversioned.status_code == 200
    assert unversioned.headers["cache-control"] == "public, max-age=0, must-revalidate"
    assert client.get("/dashboard/static/secrets.py").status_code == 404
    assert client.get("/dashboard/static/..%2F..%2Fmain.py").status_code == 404
    paths = client.get("/openapi.json").json()["paths"]
    assert "/interest-profile/{user_id}/timeline" in paths
    assert not [path for path in paths if path.startswith("/dashboard")]


# --------------------------------------------------------- the live service, tiny model
@dataclass
class LiveService:
    base_url: str
    app: Any
    users: list[str]
    drifted: int

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(self.base_url + path, params=params,
                             headers={"Authorization": "Bearer reader-key"}, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()




@pytest.fixture(scope="module")
def live(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[LiveService]:
    root = tmp_path_factory.mktemp("dashboard")
    _, _, subset = tiny_users_data()
    with tiny_model_database(tiny_model, root, "dashboard", api_keys=KEYS) as (settings, _):
        engine = make_engine(settings.database_url)
        import_movielens(subset, make_session_factory(engine), settings, progress=False)
        engine.dispose()
        app = create_app(settings)
        port = free_port(PORTS)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, name="dashboard-uvicorn", daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        try:
            model = app.state.runtime.models.current
            # The tiny model rarely crosses its calibrated threshold on 40 users; alarm on
            # every eligible event so the scan leaves records for the pages to show.
            calibrated, model.bundle.drift.threshold = model.bundle.drift.threshold, 0.0
            try:
                factory = app.state.runtime.session_factory
                ids = all_user_ids(factory)
                report = scan_users(factory, model, ids, backfill=True)
            finally:
                model.bundle.drift.threshold = calibrated
            yield LiveService(f"http://127.0.0.1:{port}", app, ids, report.drifts)
        finally:
            server.should_exit = True
            thread.join(timeout=30)


def test_backfill_stamps_each_check_at_the_users_last_event(live: LiveService) -> None:
    assert live.drifted >= len(live.users) // 2
    summary = live.get("/drift/summary", bucket="day")
    days = [datetime.fromisoformat(b["bucket_start"]) for b in summary["buckets"]]
    # One check per user, each on the day of the user's last event: ml-100k's own dates.
    assert sum(b["users_checked"] for b in summary["buckets"]) == len(live.users)
    assert len(days) > 5 and all(datetime(1997, 9, 1, tzinfo=UTC) <= d
                                 < datetime(1998, 5, 1, tzinfo=UTC) for d in days)
    records = live.get("/drift/history", limit=500)["records"]
    assert len(records) == live.drifted == sum(b["drifts"] for b in summary["buckets"])
    for record in records[:5]:
        last = live.get(f"/users/{record['user_id']}/events", limit=1)["events"][0]
        assert record["detected_at"] == last["timestamp"]
    with live.app.state.runtime.session_factory() as session:
        assert drift_records.user_ids_to_scan(session, unchecked_only=True) == []


def test_timeline_ends_at_the_current_short_term_profile(live: LiveService) -> None:
    user = live.users[0]
    timeline = live.get(f"/interest-profile/{user}/timeline")
    profile = live.get(f"/interest-profile/{user}")
    points = timeline["points"]
    assert timeline["window"] == 20 and len(points) == profile["event_count"]
    assert [p["index"] for p in points] == list(range(len(points)))
    assert points[-1]["timestamp"] == profile["as_of"]
    for point in (points[0], points[len(points) // 2], points[-1]):
        assert sum(point["weights"]) == pytest.approx(1.0)
        assert len(point["weights"]) == len(timeline["topics"])
        assert point["weights"][timeline["topics"].index(point["topic"])] > 0
    last = dict(zip(timeline["topics"], points[-1]["weights"], strict=True))
    for weight in profile["short_term"]:
        assert last[weight["topic"]] == pytest.approx(weight["weight"])
    tail = live.get(f"/interest-profile/{user}/timeline", limit=7, window=3)["points"]
    assert [p["index"] for p in tail] == [p["index"] for p in points[-7:]]
    last_three = [p["topic"] for p in points[-3:]]
    one = live.get(f"/interest-profile/{user}/timeline", limit=1, window=3)
    assert len(one["points"]) == 1
    assert dict(zip(one["topics"], one["points"][0]["weights"], strict=True)) == pytest.approx(
        {topic: last_three.count(topic) / 3 for topic in last_three})


# ------------------------------------------------------------------------------ browser
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it "
                    "(apt-get install -y chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class Tab:
    """One browser page with every request and console problem it saw."""

    def __init__(self, browser: Any, base_url: str) -> None:
        self.context = browser.new_context(
            http_credentials={"username": "dashboard", "password": "reader-key"},
            viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.base_url = base_url
        self.requests: list[str] = []
        self.problems: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("pageerror", lambda error: self.problems.append(str(error)))
        self.page.on("console", lambda message: message.type == "error"
                     and self.problems.append(message.text))
        self.page.set_default_timeout(20_000)

    def wait_ready(self) -> None:
        # A selector, not wait_for_function: the pages' CSP forbids the eval() it polls with.
        self.page.wait_for_selector("body[data-state=ready], body[data-state=error]",
                                    state="attached")
        error = self.page.locator("#error")
        assert error.is_hidden(), error.inner_text()

    def act(self, action: Any) -> None:
        """Run an action that reloads the data, then wait for the new data."""
        self.page.evaluate("document.body.dataset.state = 'stale'")
        action()
        self.wait_ready()

    def chart(self, element_id: str) -> list[dict[str, Any]]:
        """The data of a Plotly chart as drawn (`el.data`), [] when none."""
        return self.page.evaluate(f"document.getElementById('{element_id}').data || []")

    def outside_requests(self) -> list[str]:
        return [url for url in self.requests if not url.startswith(("data:", "blob:"))
                and urlparse(url).hostname != "127.0.0.1"]

    def close(self) -> None:
        self.context.close()


def _users_checked(tab: Tab) -> tuple[list[str], int]:
    bars = tab.chart("chart-drift-rate")[0]
    return bars["x"], sum(bars["y"])


def test_overview_charts_filters_and_link_to_the_user_view(live: LiveService,
                                                           browser: Any) -> None:
    tab = Tab(browser, live.base_url)
    try:
        tab.page.goto(f"{live.base_url}/dashboard")
        tab.wait_ready()
        rate = tab.chart("chart-drift-rate")
        assert [t["name"] for t in rate] == ["users checked", "drift rate"]
        days, checked = _users_checked(tab)
        assert len(days) > 5 and checked == len(live.users)
        assert all(0 <= r <= 1 for r in rate[1]["y"] if r is not None)
        sankey = tab.chart("chart-transitions")[0]
        assert sankey["type"] == "sankey" and sum(sankey["link"]["value"]) >= 1
        # The default range is the one the data covers, shown in the date fields.
        assert tab.page.input_value("#since") == days[0][:10]
        assert tab.page.input_value("#until") == days[-1][:10]

        tab.act(lambda: tab.page.select_option("#bucket", "week"))
        assert parse_qs(urlparse(tab.page.url).query)["bucket"] == ["week"]
        weeks, checked_weekly = _users_checked(tab)
        assert len(weeks) < len(days) and checked_weekly == checked

        tab.act(lambda: tab.page.select_option("#bucket", "day"))
        middle = days[len(days) // 2][:10]
        tab.page.fill("#until", middle)
        tab.act(lambda: tab.page.click("#apply"))
        query = parse_qs(urlparse(tab.page.url).query)
        assert query["until"] == [middle] and query["bucket"] == ["day"]
        assert "since" not in query  # left at the covered range: open-ended
        shown, checked_until = _users_checked(tab)
        assert shown == [d for d in days if d[:10] <= middle] and checked_until < checked
        tab.act(lambda: tab.page.go_back())
        assert _users_checked(tab)[0] == days
        tab.act(lambda: tab.page.go_forward())
        assert _users_checked(tab)[0] == shown
        # The filtered view is shareable: loading its URL afresh shows the same data.
        tab.page.reload()
        tab.wait_ready()
        assert _users_checked(tab) == (shown, checked_until)

        link = tab.page.locator("#records a.user-link").first
        user = link.inner_text()
        with tab.page.expect_navigation():
            link.click()
        tab.wait_ready()
        assert urlparse(tab.page.url).path == f"/dashboard/users/{user}"
        _assert_user_view(tab, live, user)
        assert not tab.outside_requests(), tab.outside_requests()
        assert not tab.problems, tab.problems
    finally:
        tab.close()


def _assert_user_view(tab: Tab, live: LiveService, user: str) -> None:
    timeline = tab.chart("chart-timeline")
    areas = [t for t in timeline if t.get("stackgroup")]
    events = live.get(f"/interest-profile/{user}")["event_count"]
    assert areas and all(len(t["y"]) == events for t in areas)
    marks = [t for t in timeline if t["name"] == "change point"]
    records = live.get("/drift/history", user_id=user)["records"]
    assert marks and marks[0]["x"] == [r["change_index"] for r in records]
    shapes = tab.page.evaluate("document.getElementById('chart-timeline').layout.shapes")
    assert [s["x0"] for s in shapes] == marks[0]["x"]
    profile = tab.chart("chart-profile")
    assert [t["name"] for t in profile] == ["long term", "short term"] and profile[0]["x"]
    rows = tab.page.locator("#recommendations tbody tr")
    assert rows.count() == 10
    served = live.get(f"/recommend/{user}", k=10)["items"]
    assert rows.first.locator("td").nth(2).inner_text() == served[0]["topic"]
    # why: the recent history items most like it (issue 18, explanations)
    reasons = [r["title"] or r["item_id"] for r in served[0]["because"]]
    assert rows.first.locator("td").nth(3).inner_text() == ("; ".join(reasons) or "\u2014")
    tab.act(lambda: tab.page.select_option("#axis", "time"))
    assert parse_qs(urlparse(tab.page.url).query)["x"] == ["time"]
    dated = next(t for t in tab.chart("chart-timeline") if t.get("stackgroup"))["x"]
    assert str(dated[0]).startswith(("1997", "1998"))


def test_user_view_opened_directly_gets_its_data(live: LiveService, browser: Any) -> None:
    """A first visit straight to a user's page: the browser was challenged below /dashboard/,
    yet the page's API calls (outside that path) still carry the credentials."""
    user = live.get("/drift/history", limit=1)["records"][0]["user_id"]
    tab = Tab(browser, live.base_url)
    try:
        response = tab.page.goto(f"{live.base_url}/dashboard/users/{user}")
        assert response is not None and response.status == 200
        tab.wait_ready()
        assert [t for t in tab.chart("chart-timeline") if t.get("stackgroup")]
        # Only the first API call is refused (then the page hands the credentials over).
        assert len(tab.problems) == 1 and "401" in tab.problems[0], tab.problems
        assert not tab.outside_requests()
        tab.page.goto(f"{live.base_url}/dashboard/users/nobody")
        tab.page.wait_for_selector("body[data-state=error]", state="attached")
        assert "nobody" in tab.page.inner_text("#error")
    finally:
        tab.close()


# Plotly reads labels, legend names and hover text as pseudo-HTML: data must reach it as text.
HOSTILE_TITLE = '<a href="https://evil.example/title">Evil &amp; <b>bold</b></a>'
HOSTILE_TOPIC = '<a href="https://evil.example/topic">Topic</a>'
HOSTILE_USER = "probe:user@evil.example"  # ids cannot hold markup; this one is shown too


def _anchors_to_evil(tab: Tab) -> list[str]:
    return tab.page.evaluate(
        "[...document.querySelectorAll('a')].map((a) => a.outerHTML)"
        ".filter((html) => html.includes('evil.example'))")


def test_titles_topics_and_user_ids_are_plain_text_in_the_charts(live: LiveService,
                                                                  browser: Any) -> None:
    """Runs last in this module: it adds a user, an item and a record to the live store."""
    write = {"Authorization": "Bearer writer-key"}
    item = {"item_id": "probe-evil", "title": HOSTILE_TITLE, "categories": [HOSTILE_TOPIC]}
    assert httpx.post(f"{live.base_url}/items", json={"items": [item]}, headers=write,
                      timeout=30).status_code == 200
    start = datetime(1998, 3, 1, tzinfo=UTC)
    events = [{"event_id": f"probe-{i}", "user_id": HOSTILE_USER, "item_id": item_id,
               "type": "rate", "value": 4, "timestamp": (start + timedelta(hours=i)).isoformat()}
              for i, item_id in enumerate(["1", "2", "probe-evil", "3", "4"])]
    # the catalogue refresher embeds the new item in the background: until then, a 422
    deadline = time.monotonic() + 60
    while True:
        posted = httpx.post(f"{live.base_url}/events", json={"events": events}, headers=write,
                            timeout=30)
        if posted.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert posted.status_code == 200, posted.text
    deadline = time.monotonic() + 60
    while True:
        points = live.get(f"/interest-profile/{HOSTILE_USER}/timeline")["points"]
        if any(p["item_id"] == "probe-evil" for p in points) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    evil_point = next(i for i, p in enumerate(points) if p["item_id"] == "probe-evil")
    with transaction(live.app.state.runtime.session_factory) as session:
        drift_records.record_drift(
            session, user_id=HOSTILE_USER, change_event_id="probe-2", change_at=start,
            change_index=2, score=0.9, threshold=0.5, kind="abrupt", model_version="1",
            # its topics are data too (a model's topics come from item categories)
            interests_before={HOSTILE_TOPIC: 1.0}, interests_after={"Drama": 1.0},
            detected_at=start + timedelta(hours=5))

    tab = Tab(browser, live.base_url)
    try:
        tab.page.goto(f"{live.base_url}/dashboard/users/{HOSTILE_USER}")
        tab.wait_ready()
        assert tab.page.inner_text("#user-id") == HOSTILE_USER
        # hover the planted event, then the change point
        tab.page.evaluate(f"Plotly.Fx.hover('chart-timeline', "
                          f"[{{curveNumber: 0, pointNumber: {evil_point}}}])")
        hover = tab.page.locator("#chart-timeline .hoverlayer").text_content() or ""
        assert HOSTILE_TITLE in hover, hover
        assert not _anchors_to_evil(tab), _anchors_to_evil(tab)
        marks = next(i for i, t in enumerate(tab.chart("chart-timeline"))
                     if t["name"] == "change point")
        tab.page.wait_for_timeout(300)  # Plotly ignores a hover within 50 ms of the last
        tab.page.evaluate(f"Plotly.Fx.hover('chart-timeline', "
                          f"[{{curveNumber: {marks}, pointNumber: 0}}])")
        hover = tab.page.locator("#chart-timeline .hoverlayer").text_content() or ""
        assert HOSTILE_TOPIC in hover, hover
        assert not _anchors_to_evil(tab), _anchors_to_evil(tab)

        tab.page.goto(f"{live.base_url}/dashboard")
        tab.wait_ready()
        sankey = tab.page.locator("#chart-transitions").text_content() or ""
        assert HOSTILE_TOPIC in sankey, sankey
        assert not _anchors_to_evil(tab), _anchors_to_evil(tab)
        assert not tab.outside_requests(), tab.outside_requests()
    finally:
        tab.close()
