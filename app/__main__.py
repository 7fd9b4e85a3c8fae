"""`python -m app serve`: start uvicorn the safe way (loopback only when auth is off)."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from app.core.config import get_settings
from app.core.security import parse_api_keys
from app.store.migrate import upgrade_head

LOOPBACK = "127.0.0.1"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m app")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    sub.add_parser("migrate", help="apply the database migrations (alembic upgrade head)")
    args = parser.parse_args()
    settings = get_settings()
    logging.basicConfig(level=settings.log_level)
    if args.command == "migrate":
        upgrade_head(settings.database_url)
        return
    host = args.host or settings.host
    if not parse_api_keys(settings.api_keys) and host != LOOPBACK:
        logging.getLogger("driftrec").warning(
            "no API keys configured: binding to %s instead of %s", LOOPBACK, host)
        host = LOOPBACK
    uvicorn.run("app.main:create_app", factory=True, host=host,
                port=args.port or settings.port, workers=args.workers)


if __name__ == "__main__":
    main()
