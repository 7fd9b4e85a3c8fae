"""Importers into the service's store (``DRIFTREC_DATABASE_URL``), through its own ingestion
code. Each is idempotent (a re-run adds nothing), shows a progress bar and prints a summary.

    python -m training.data import-movielens [--variant 100k|1m] [--if-empty]
    python -m training.data import --items items.csv --events events.jsonl \\
        [--map movie=item_id --map ts=timestamp] [--skip-bad [--rejects FILE]]

Exit status: 0 when every row was stored, 1 when any row was refused or reused an
``event_id`` with other content (a conflict: not stored; 0 with ``--accept-conflicts``), 2 for
a file that cannot be imported at all (unknown format, missing columns).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from app.core.config import VAR_DIR, get_settings
from app.store.db import make_engine, make_session_factory
from training.data.files import FileImportError, parse_mapping
from training.data.importer import ImportReport, import_files, import_movies


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    movielens = sub.add_parser("import-movielens", help="fetch MovieLens and load it")
    movielens.add_argument("--variant", choices=["100k", "1m"], default="100k")
    movielens.add_argument("--if-empty", action="store_true",
                           help="do nothing when the store already holds events")
    files = sub.add_parser("import", help="load a catalogue and/or events from files "
                           "(CSV, JSON Lines or Parquet, by extension)")
    files.add_argument("--items", type=Path, help="item_id, title[, text, categories, "
                       "attributes]")
    files.add_argument("--events", type=Path, help="user_id, item_id, timestamp[, type, "
                       "value, text, event_id]")
    files.add_argument("--map", action="append", metavar="SRC=DST", default=[],
                       help="rename a file column onto the contract (repeatable)")
    files.add_argument("--skip-bad", action="store_true",
                       help="store the good rows of a batch, write bad ones to --rejects")
    files.add_argument("--rejects", type=Path, help="rejects file (JSON Lines); default "
                       "var/import/rejects-<time>.jsonl")
    files.add_argument("--accept-conflicts", action="store_true",
                       help="exit 0 although rows reuse an event_id with other content "
                       "(they are still not stored, and still reported)")
    files.add_argument("--batch-size", type=int, default=None)
    for command in (movielens, files):
        command.add_argument("--no-progress", action="store_true")
    return parser


def _print_summary(report: ImportReport, started: float) -> None:
    for counts in report.counts:
        print(counts.summary())
    print(f"done in {time.perf_counter() - started:.1f} s")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = get_settings()
    started = time.perf_counter()
    engine = make_engine(settings.database_url)
    factory = make_session_factory(engine)
    try:
        if args.command == "import-movielens":
            if args.variant == "100k":
                from training.data import movielens

                dataset = movielens.load(settings.data_cache_dir)
                report = import_movies(dataset.movies, dataset.ratings, "ml-100k", factory,
                                       settings, len(dataset.ratings), args.if_empty,
                                       not args.no_progress)
            else:
                from training.data import movielens1m

                ml1m = movielens1m.load(settings.data_cache_dir)
                report = import_movies(ml1m.movies(), ml1m.ratings(), "ml-1m", factory,
                                       settings, movielens1m.RATINGS, args.if_empty,
                                       not args.no_progress)
            if report.skipped:
                print(f"ml-{args.variant} import skipped: the store already holds events")
                return 0
        else:
            rejects = args.rejects
            if args.skip_bad and rejects is None:
                stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
                rejects = VAR_DIR / "import" / f"rejects-{stamp}.jsonl"
            try:
                report = import_files(args.items, args.events, factory, settings,
                                      parse_mapping(args.map), args.skip_bad, rejects,
                                      not args.no_progress, args.batch_size,
                                      accept_conflicts=args.accept_conflicts)
            except FileImportError as error:
                print(f"import error: {error}", file=sys.stderr)
                return 2
            if report.rejects is not None:
                print(f"refused rows written to {report.rejects}")
    finally:
        engine.dispose()
    _print_summary(report, started)
    if not report.ok:
        if any(not c.ok for c in report.counts):
            print("some rows were refused (see above); the exit status is 1", file=sys.stderr)
        if report.conflicts and not report.accept_conflicts:
            print(f"{report.conflicts} row(s) reuse an event_id with other content and were "
                  "not stored (see above); the exit status is 1 (--accept-conflicts: 0)",
                  file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
