"""Check bench/loadgen.py's mixed workload against wrk (Debian's package, bench/wrk_mixed.lua).

Run: `python -m bench.wrk_check [--backend sqlite|postgresql]`. One service (1 worker, ml-100k
in a fresh database), warmed with one event+recommend pair per user; then our load generator
and wrk, each at c=32, one after the other, then ours again (the machine is shared: the two
runs of ours bracket wrk's). Writes bench/results/serve_wrk_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.core.config import VAR_DIR
from bench.common import ROOT, fresh_database, machine, running_service_process, write_result
from bench.loadgen import Step
from bench.serve import EventClock, _base_env, _import, drive_mixed, mixed_units
from training.data import movielens


def run_wrk(base: str, seconds: int, connections: int) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    command = [wrk, "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
               "-s", str(ROOT / "bench" / "wrk_mixed.lua"), base, "--",
               f"wrk-{int(time.time())}", str(int(time.time() - 86_400))]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next(x for x in output.splitlines() if x.startswith("WRK_JSON "))
    row = json.loads(line[len("WRK_JSON "):])
    pairs = row["requests"] / 2 / row["duration_s"]
    return {"recommend_rps": round(pairs, 1), "events_rps": round(pairs, 1),
            "p50_ms": row["p50_ms"], "p99_ms": row["p99_ms"], "errors": row["errors"],
            "requests": row["requests"], "load_average": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="sqlite")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--units", type=int, default=2000)
    args = parser.parse_args()
    dataset = movielens.load(VAR_DIR / "cache")
    users = sorted({r.user_id for r in dataset.ratings})
    random.Random(0).shuffle(users)
    items = sorted({r.item_id for r in dataset.ratings})
    tag = f"check-{int(time.time())}"
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as workdir, \
            fresh_database(args.backend, Path(workdir)) as url:
        _import(dataset, url)
        with running_service_process(_base_env(url), workers=1) as (base, _):
            clock = EventClock()

            def units(name: str) -> Callable[[int], list[Step]]:
                return mixed_units(users, items, f"{tag}-{name}", clock)

            drive_mixed(base, units("warm"), 32, len(users))
            rows["loadgen_before"] = drive_mixed(base, units("a"), 32, args.units)
            rows["wrk"] = run_wrk(base, args.seconds, 32)
            rows["loadgen_after"] = drive_mixed(base, units("b"), 32, args.units)
    for name, row in rows.items():
        print(f"{name:15s} {row}")
    write_result("serve_wrk_check", {
        "benchmark": "mixed event-then-recommend workload, c=32, 1 worker: bench/loadgen.py "
                     "against wrk with bench/wrk_mixed.lua", "backend": args.backend,
        "machine": machine(), **rows,
        "notes": "wrk's request() runs per thread, so a pair's POST and GET may go out on "
                 "different connections (same mix, same order per thread); wrk's latencies "
                 "are over both kinds; load_average after each row."})


if __name__ == "__main__":
    main()
