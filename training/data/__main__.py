"""`python -m training.data import-movielens [--if-empty]`: fetch ml-100k and load it."""

from __future__ import annotations

import argparse
import time

from app.core.config import get_settings
from app.store.db import make_engine, make_session_factory
from training.data import movielens
from training.data.importer import import_movielens


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m training.data")
    sub = parser.add_subparsers(dest="command", required=True)
    command = sub.add_parser("import-movielens", help="fetch ml-100k and load it into the store")
    command.add_argument("--if-empty", action="store_true",
                         help="do nothing when the store already holds events")
    command.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()

    settings = get_settings()
    started = time.perf_counter()
    dataset = movielens.load(settings.data_cache_dir)
    engine = make_engine(settings.database_url)
    try:
        report = import_movielens(dataset, make_session_factory(engine), settings,
                                  if_empty=args.if_empty, progress=not args.no_progress)
    finally:
        engine.dispose()
    if report.skipped:
        print("ml-100k import skipped: the store already holds events")
        return
    print(f"ml-100k: {report.items} items upserted, {report.accepted} events stored, "
          f"{report.duplicates} duplicates skipped in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
