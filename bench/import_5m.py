"""Issue 13's scale figure: 5 million events from one file into PostgreSQL, in bounded memory.

ML-1M's users replicated five times (``bench/replicate.py``: 5,001,045 events, 30,200 users,
one CSV of about 130 MiB) are imported with the product's importer into a fresh, migrated
database, items in the same run::

    /usr/bin/time -v nice -n 10 python -m training.data import \\
        --items var/scale/x5/items.csv --events var/scale/x5/events.csv --no-progress

Reported: wall time, events/s, client CPU, the importer's peak RSS (``/usr/bin/time -v``),
the rows stored (counted in the database) and the load average. Writes
``bench/results/import_5m.json`` and adds the import to ``bench/results/scale.json`` as size
x5 (import figures only: a fourth point of the import curve); the database and the files
are dropped afterwards unless ``--keep``.

    python -m bench.import_5m [--copies 5] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Sequence
from typing import Any

import psycopg

from bench.common import PG_ADMIN_URL, RESULTS, machine
from bench.scale import WORK, rebuild, stage_generate, timed_import


def merge_into_scale(copies: int, result: dict[str, Any], output: str = "scale") -> None:
    """Add this import as size x<copies> of bench/results/scale.json (import figures only),
    so the import curve has the point; the other stages of that size stay unmeasured."""
    path = RESULTS / f"{output}.json"
    payload = json.loads(path.read_text()) if path.exists() else {"sizes": []}
    sizes = [e for e in payload["sizes"] if e.get("copies") != copies or e.get("extrapolated")]
    sizes.append({"copies": copies, "events": result["events"], "users": copies * 6040,
                  "note": "import only: the run of bench/import_5m.py (bench/results/"
                          "import_5m.json)", "import": result})
    payload["sizes"] = sorted(sizes, key=lambda e: e["copies"])
    path.write_text(json.dumps(rebuild(payload, []), indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.import_5m", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the database and files")
    parser.add_argument("--output", default="import_5m")
    args = parser.parse_args(argv)
    copies = args.copies
    generated = stage_generate(copies)["generate"]
    result = timed_import(copies, WORK / f"x{copies}" / "items.csv",
                          WORK / f"x{copies}" / "events.csv")
    name = f"scale_x{copies}"
    with psycopg.connect(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}") as conn:
        counted = conn.execute("SELECT count(*), count(DISTINCT user_id) FROM events").fetchone()
    payload = {
        "benchmark": "one events file of ML-1M users replicated x5 into a fresh PostgreSQL "
                     "database through the generic importer (issue 13, section 2: 5M events "
                     "from one file without holding them in memory)",
        "command": result.pop("command"),
        "generator": f"python -m bench.replicate --copies {copies} --out var/scale/x{copies}",
        "file": {"events": generated["events"], "users": generated["users"],
                 "items": generated["items"], "events_file_mib": generated["events_file_mib"],
                 "format": "CSV: user_id,item_id,timestamp (epoch s),type,value; no event_id "
                           "(the importer derives one from the content)",
                 "generate_s": generated["seconds"]},
        "stored_events": counted[0] if counted else None,
        "stored_users": counted[1] if counted else None,
        **result,
        "memory_note": "rows are streamed: the reader validates one batch of 5,000 while one "
                       "writer thread stores the previous one (two batches in flight at most)",
        "machine": {**machine(), "note": "2 cores shared with a high-priority training run "
                    "and other engineers' jobs (see the load averages)"},
        "date": time.strftime("%Y-%m-%d"),
    }
    path = RESULTS / f"{args.output}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    merge_into_scale(copies, {**result, "command": payload["command"]})
    print(json.dumps(payload, indent=1))
    if not args.keep:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(WORK / f"x{copies}", ignore_errors=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
