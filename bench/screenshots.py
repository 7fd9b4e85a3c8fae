"""Screenshots of the dashboard for the README (docs/dashboard-*.png).

Run against a service on the full ml-100k data (after `make bootstrap`):

    .venv/bin/python -m app serve --port 18150 &
    .venv/bin/python -m bench.screenshots --base-url http://127.0.0.1:18150

The user page shows a user with a clear drift (see `pick_user`) unless `--user` names one.
Drives Debian's /usr/bin/chromium.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, sync_playwright

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
DOCS = Path(__file__).resolve().parent.parent / "docs"


def pick_user(base_url: str, headers: dict[str, str]) -> str:
    """A user with a clear recorded drift in the middle of their history: the highest score
    among records whose top topic moved and whose change point lies in the middle 40-80% of
    the user's events (a change at the very end shows little of the new interests)."""
    records: list[dict[str, Any]] = httpx.get(
        f"{base_url}/drift/history", params={"limit": 500}, headers=headers, timeout=60
    ).raise_for_status().json()["records"]
    if not records:
        raise SystemExit("no drift records: run `python -m app drift-scan` first")
    moved = sorted((r for r in records if r["from_topic"] != r["to_topic"]),
                   key=lambda r: (-r["score"], r["user_id"]))
    for record in moved[:100]:
        events = httpx.get(f"{base_url}/interest-profile/{record['user_id']}", headers=headers,
                           timeout=60).raise_for_status().json()["event_count"]
        if 0.4 <= record["change_index"] / events <= 0.8:
            return str(record["user_id"])
    return str((moved or records)[0]["user_id"])


def shoot(page: Page, url: str, path: Path) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-state=ready], body[data-state=error]", state="attached")
    if page.locator("#error").is_visible():
        raise SystemExit(f"{url}: {page.inner_text('#error')}")
    page.wait_for_timeout(500)  # let Plotly finish its transitions
    page.screenshot(path=str(path), full_page=True)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.screenshots")
    parser.add_argument("--base-url", default="http://127.0.0.1:18150")
    parser.add_argument("--key", default=None, help="an API key with the read scope, if any")
    parser.add_argument("--user", default=None)
    parser.add_argument("--bucket", default="week", choices=["hour", "day", "week"])
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    user = args.user or pick_user(args.base_url, headers)
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, headless=True,
                                             args=CHROMIUM_ARGS)
        credentials = {"username": "dashboard", "password": args.key} if args.key else None
        context = browser.new_context(viewport={"width": 1400, "height": 900},
                                      device_scale_factor=1, http_credentials=credentials)
        page = context.new_page()
        shoot(page, f"{args.base_url}/dashboard?bucket={args.bucket}",
              args.out / "dashboard-overview.png")
        shoot(page, f"{args.base_url}/dashboard/users/{user}", args.out / "dashboard-user.png")
        browser.close()


if __name__ == "__main__":
    main()
