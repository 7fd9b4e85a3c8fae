"""How DriftRec's costs grow with the store: MovieLens-1M users replicated x1, x2, x4 ...

For each size (``--sizes 1,2,4``: copies of ML-1M's 6,040 users, ``bench/replicate.py``):

- ``generate``: one events file and the items file under ``var/scale/x<k>/``, streamed;
- ``import``: a fresh PostgreSQL database ``scale_x<k>`` (migrated), then the product's own
  path, ``python -m training.data import --items ... --events ...``, under
  ``/usr/bin/time -v`` (wall time, events/s, client CPU, the importer's peak RSS);
- ``train``: one epoch of the ML-1M config's sequence model on a snapshot of that store
  (``bench/scale_stages.py``: a few timed steps, extrapolated to the epoch; labelled);
- ``scan``: the drift scan with the champion, single-process and on Ray (2 CPUs), each over
  a fixed random sample of the size's users (disjoint samples: a second scan of the same
  users would not be a first check; 400 and 2,000), extrapolated to every user (labelled).
  Ray's workers get ``RAY_worker_niceness=0`` (``--ray-worker-niceness``): Ray's default
  of 15 put them at nice 19 under this benchmark's 10, where the other jobs starved them;
- ``serve``: ``python -m app serve`` (1 worker) on that store with the champion: start-up
  time, worker RSS, and ``/recommend`` p50/p99 for users never asked before, with the
  ranking cache off (every request reads the history and runs the model).

Each cost is then fitted against the number of events (a power law, ``bench/curves.py``)
and the sizes not measured (``--extrapolate 16``) are filled in from the fits, labelled
``"extrapolated": true``. Results merge into ``bench/results/scale.json`` (a stage re-run
replaces that stage of that size); plots go to ``docs/scale_*.png``.

    python -m bench.scale --sizes 1,2,4 --stages generate,import,train,scan,serve
    python -m bench.scale --drop          # remove the scale_x* databases and var/scale
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

from bench.common import PG_ADMIN_URL, RESULTS, ROOT, machine, rss_mib, running_service_process
from bench.curves import PowerLaw, fit_power_law, plot

WORK = ROOT / "var" / "scale"
STAGES = ("generate", "import", "train", "scan", "serve")
ML1M_EVENTS = 1_000_209
NICE = ["nice", "-n", "10"]
# The costs fitted against the number of events: (result key, what it is).
FITTED = {
    "import_s": "import wall time, s",
    "import_cpu_s": "import CPU, client + database server, s",
    "import_cpu_us_per_event": "import CPU per event, client + server, µs",
    "import_events_per_s": "import events per second (wall)",
    "import_peak_rss_mib": "importer peak RSS, MiB",
    "scan_single_s": "drift scan, one process, s (from a sample)",
    "scan_ray_s": "drift scan, Ray 2 CPUs, s (from a sample)",
    "scan_cpu_ms_per_user": "drift scan, one process, CPU per user, ms",
    "scan_single_cpu_s": "drift scan, one process, CPU for every user, s (from a sample)",
    "train_epoch_s": "one training epoch, s (from timed steps)",
    "train_epoch_cpu_s": "one training epoch, CPU s (one thread, from timed steps)",
    "train_step_cpu_s": "one training step (64 windows of 200), CPU s",
    "snapshot_read_s": "training snapshot read, s",
    "train_peak_rss_mib": "training process peak RSS, MiB",
    "serve_p99_c32_ms": "/recommend p99 at c=32, ms",
    "serve_p99_c1_ms": "/recommend p99 at c=1, ms",
    "serve_cpu_ms_per_request": "serving worker CPU per /recommend (c=32), ms",
    "serve_worker_rss_mib": "serving worker RSS after the load, MiB",
    "serve_startup_s": "service start-up to /readyz, s",
}


# The costs that are totals over the store (a linear one has slope 1); the others are per
# unit (per event, user, request; latencies; memory), whose flat line is slope 0.
TOTALS = {"import_s", "import_cpu_s", "scan_single_s", "scan_ray_s", "scan_single_cpu_s",
          "train_epoch_s", "train_epoch_cpu_s", "snapshot_read_s"}


def database_url(copies: int) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    return f"{base}/scale_x{copies}"


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def child_env(copies: int, registry: Path | None) -> dict[str, str]:
    env = {**os.environ, "DRIFTREC_DATABASE_URL": database_url(copies),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "DRIFTREC_LOG_LEVEL": "WARNING"}
    if registry is not None:
        env.update(DRIFTREC_MLFLOW_TRACKING_URI=f"sqlite:///{registry / 'mlflow.db'}",
                   DRIFTREC_MLFLOW_ARTIFACT_ROOT=str(registry / "artifacts"))
    return env


# ---------------------------------------------------------------------------- stages
def stage_generate(copies: int) -> dict[str, Any]:
    from app.core.config import get_settings
    from bench.replicate import generate

    result = generate(copies, WORK / f"x{copies}", get_settings().data_cache_dir)
    return {"generate": result.as_dict()}


def recreate_database(copies: int) -> None:
    from app.store.migrate import upgrade_head

    name = f"scale_x{copies}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    upgrade_head(database_url(copies))


def parse_time_v(text: str) -> dict[str, float]:
    """The figures of ``/usr/bin/time -v`` this benchmark reports."""
    wanted = {"Maximum resident set size (kbytes)": "peak_rss_kib",
              "User time (seconds)": "user_s", "System time (seconds)": "system_s",
              "Elapsed (wall clock) time (h:mm:ss or m:ss)": "wall"}
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.strip().rpartition(": ")
        if name in wanted:
            if wanted[name] == "wall":
                parts = [float(p) for p in value.split(":")]
                found["wall_s"] = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
            else:
                found[wanted[name]] = float(value)
    return found


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used so far, from /proc; None once gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backend_cpu_s(database: str) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend connected to ``database`` (the server
    runs on this machine)."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        pids = [row[0] for row in admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,))]
    found = {}
    for pid in pids:
        cpu = process_cpu_s(pid)
        if cpu is not None:
            found[pid] = cpu
    return found


def timed_import(copies: int, items: Path, events: Path) -> dict[str, Any]:
    """Fresh database, then the importer under /usr/bin/time -v (niced). The database
    backends' CPU is sampled every second, so client and server CPU per event are known
    apart from the wall time (which the shared machine's load stretches)."""
    recreate_database(copies)
    name = f"scale_x{copies}"
    command = [*NICE, sys.executable, "-m", "training.data", "import", "--items", str(items),
               "--events", str(events), "--no-progress"]
    before = load_average()
    server: dict[int, float] = {}
    loads = []
    with subprocess.Popen(["/usr/bin/time", "-v", *command], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=child_env(copies, None)) as process:
        while process.poll() is None:
            server.update(backend_cpu_s(name))
            loads.append(os.getloadavg()[0])
            time.sleep(1.0)
        stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"import failed ({process.returncode}): {stderr[-2000:]}")
    usage = parse_time_v(stderr)
    match = re.search(r"events: (\d+) rows read, (\d+) stored.* in ([\d.]+) s", stdout)
    if match is None:
        raise RuntimeError(f"no events summary in the importer's output: {stdout}")
    stored = int(match[2])
    with psycopg.connect(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}") as conn:
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        index = conn.execute("SELECT pg_relation_size('uq_events_event_id')").fetchone()
    client_cpu = usage["user_s"] + usage["system_s"]
    server_cpu = sum(server.values())
    return {
        "command": " ".join(["/usr/bin/time", "-v", *NICE, "python -m training.data import",
                             f"--items {items.relative_to(ROOT)}",
                             f"--events {events.relative_to(ROOT)}", "--no-progress"]),
        "events": stored, "events_stage_s": float(match[3]),
        "import_s": round(usage["wall_s"], 1),
        "events_per_s": round(stored / usage["wall_s"]),
        "client_cpu_s": round(client_cpu, 1),
        "server_cpu_s": round(server_cpu, 1),
        "cpu_us_per_event": round(1e6 * (client_cpu + server_cpu) / stored, 1),
        "import_peak_rss_mib": round(usage["peak_rss_kib"] / 1024, 1),
        "database_mib": round(size[0] / 2**20) if size else None,
        "event_id_index_mib": round(index[0] / 2**20) if index else None,
        "load_average_before": before, "load_average_after": load_average(),
        "load_average_1min_median": round(statistics.median(loads), 2) if loads else None}


def stage_import(copies: int) -> dict[str, Any]:
    folder = WORK / f"x{copies}"
    return {"import": timed_import(copies, folder / "items.csv", folder / "events.csv")}


def run_child(args: list[str], copies: int, registry: Path | None,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    """`python -m bench.scale_stages ...` (niced) against this size's store; its JSON."""
    before = load_average()
    started = time.perf_counter()
    done = subprocess.run([*NICE, sys.executable, "-m", "bench.scale_stages", *args], cwd=ROOT,
                          capture_output=True, text=True,
                          env={**child_env(copies, registry), **(env or {})}, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(process_wall_s=round(time.perf_counter() - started, 1),
                  load_average_before=before, load_average_after=load_average())
    return result


def stage_train(copies: int, args: argparse.Namespace) -> dict[str, Any]:
    result = run_child(["train", "--steps", str(args.train_steps),
                        "--eval-users", str(args.eval_users)], copies, None)
    result["command"] = (f"python -m bench.scale_stages train --steps {args.train_steps} "
                         f"--eval-users {args.eval_users}")
    result["extrapolated"] = ("epoch = steps_per_epoch x median step + the validation pass "
                              f"timed on {result['eval_users_timed']} users, scaled to all")
    return {"train": result}


def user_samples(copies: int, sizes: Sequence[int], seed: int) -> list[list[str]]:
    """Disjoint random samples of this size's users (fixed seed per size)."""
    with psycopg.connect(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/scale_x{copies}") as conn:
        users = sorted(row[0] for row in conn.execute("SELECT user_id FROM users"))
    random.Random(seed * 1000 + copies).shuffle(users)
    samples, start = [], 0
    for size in sizes:
        samples.append(users[start:start + size])
        start += size
    return samples


def scan_extrapolation(result: dict[str, Any]) -> float:
    """Seconds for a scan of every stored user, from the sampled scan: the whole command as
    measured (start-up, model load, Ray start, the sample, shut-down) plus the users it did
    not check at the steady rate it reached."""
    rest = result["stored_users"] - result["users_sampled"]
    return round(result["process_wall_s"] + rest / result["steady_users_per_s"], 1)


RAY_DEFAULT_NICENESS = 15  # what Ray adds to its workers' niceness unless told otherwise


def stage_scan(copies: int, args: argparse.Namespace, registry: Path,
               previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sampled scans (``--scan-modes``; the other mode's result of an earlier run is
    kept). Ray's workers get ``--ray-worker-niceness`` on top of this process's niceness
    (``RAY_worker_niceness``; Ray's default, 15, left them at 19 here, starved by the other
    jobs, while the single-process scan ran at 10)."""
    ray_sample = args.ray_scan_sample or args.scan_sample
    single_users, ray_users = user_samples(copies, [args.scan_sample, ray_sample], 1)
    with psycopg.connect(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/scale_x{copies}") as conn:
        conn.execute("TRUNCATE drift_checks, drift_records")  # every check a first one
    out: dict[str, Any] = dict(previous or {})
    modes = [m for m in args.scan_modes.split(",") if m]
    for mode, users in (("single", single_users), ("ray", ray_users)):
        if mode not in modes:
            continue
        path = WORK / f"x{copies}" / f"scan_{mode}_users.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(users) + "\n")
        env = {"RAY_worker_niceness": str(args.ray_worker_niceness)} if mode == "ray" else {}
        result = run_child(["scan", "--mode", mode, "--users", str(path)], copies, registry,
                           env)
        result["full_scan_s_extrapolated"] = scan_extrapolation(result)
        result["command"] = (f"python -m bench.scale_stages scan --mode {mode} --users "
                             f"<{len(users)} sampled user ids>")
        if mode == "ray":
            result["ray_worker_niceness"] = args.ray_worker_niceness
            earlier = out.get("ray", {})
            niceness = earlier.get("ray_worker_niceness", RAY_DEFAULT_NICENESS)
            if earlier and niceness != args.ray_worker_niceness:
                out[f"ray_worker_niceness_{niceness}"] = {**earlier,
                                                          "ray_worker_niceness": niceness}
        out[mode] = result
    out["extrapolated"] = ("each scan checked a fixed random sample of the size's users "
                           "(users_sampled; disjoint for the two modes, Ray's larger since its "
                           "actors work on several batches before the first one is counted); "
                           "full_scan_s_extrapolated = the "
                           "command's measured wall time + the users not in the sample at the "
                           "steady rate (users/s between the first and the last completion)")
    return {"scan": out}


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def stage_serve(copies: int, args: argparse.Namespace, registry: Path) -> dict[str, Any]:
    from bench.common import worker_pids
    from bench.loadgen import run_load

    warm, c32, c1 = user_samples(copies, [64, args.serve_requests, args.serve_requests // 5],
                                 2)
    env = {k: v for k, v in child_env(copies, registry).items()
           if k.startswith("DRIFTREC_") or k in ("OMP_NUM_THREADS",)}
    env.update({"DRIFTREC_API_KEYS": "", "DRIFTREC_MODEL_POLL_SECONDS": "0",
                "DRIFTREC_RANKING_CACHE_SIZE": "0"})
    out: dict[str, Any] = {"workers": 1, "ranking_cache": "off", "load_average_before":
                           load_average()}
    started = time.perf_counter()
    with running_service_process(env, workers=1, timeout=600) as (base, process):
        out["startup_s"] = round(time.perf_counter() - started, 1)
        pid = worker_pids(process.pid)[0]
        out["worker_rss_ready_mib"] = rss_mib(pid)
        for name, users, concurrency in (("warm", warm, 8), ("c32", c32, 32), ("c1", c1, 1)):
            cpu = process_cpu_s(pid) or 0.0
            result = run_load(base, lambda n, u=users: f"/recommend/{u[n]}?k=10", concurrency,
                              len(users))
            cpu = (process_cpu_s(pid) or 0.0) - cpu
            if result.statuses.get(200, 0) != len(users):
                raise RuntimeError(f"failed requests at {name}: {result.statuses}")
            if name != "warm":
                out[name] = {"requests": len(users), "distinct_users": len(set(users)),
                             "p50_ms": round(statistics.median(result.latencies_ms), 1),
                             "p99_ms": round(percentile(result.latencies_ms, 99), 1),
                             "rps": round(len(users) / result.elapsed_s, 1),
                             # the worker's CPU per request: what load does not stretch
                             "worker_cpu_ms_per_request": round(1000 * cpu / len(users), 1),
                             "load_average": load_average()[0]}
        out["worker_rss_after_mib"] = rss_mib(pid)
    out["load_average_after"] = load_average()
    out["command"] = ("python -m app serve --workers 1 (DRIFTREC_RANKING_CACHE_SIZE=0), "
                      f"/recommend/{{user}}?k=10 once for each of {args.serve_requests} "
                      f"sampled users at c=32, then {args.serve_requests // 5} at c=1")
    return {"serve": out}


# ----------------------------------------------------------------------------- results
def flat_costs(entry: dict[str, Any]) -> dict[str, float]:
    """The fitted costs of one measured size, from its stage results."""
    costs: dict[str, float] = {}
    if "import" in entry:
        costs["import_s"] = entry["import"]["import_s"]
        costs["import_peak_rss_mib"] = entry["import"]["import_peak_rss_mib"]
        costs["import_cpu_s"] = round(entry["import"]["client_cpu_s"]
                                      + entry["import"]["server_cpu_s"], 1)
        costs["import_cpu_us_per_event"] = entry["import"]["cpu_us_per_event"]
        costs["import_events_per_s"] = entry["import"]["events_per_s"]
    if "scan" in entry:
        costs["scan_single_s"] = entry["scan"]["single"]["full_scan_s_extrapolated"]
        costs["scan_ray_s"] = entry["scan"]["ray"]["full_scan_s_extrapolated"]
        costs["scan_cpu_ms_per_user"] = entry["scan"]["single"]["cpu_ms_per_user"]
        costs["scan_single_cpu_s"] = round(entry["scan"]["single"]["cpu_ms_per_user"]
                                           * entry["scan"]["single"]["stored_users"] / 1000, 1)
    if "train" in entry:
        costs["train_epoch_s"] = entry["train"]["epoch_s_extrapolated"]
        if "epoch_cpu_s_extrapolated" in entry["train"]:
            costs["train_epoch_cpu_s"] = entry["train"]["epoch_cpu_s_extrapolated"]
        costs["snapshot_read_s"] = entry["train"]["snapshot_read_s"]
        costs["train_step_cpu_s"] = entry["train"]["step_cpu_s_median"]
        costs["train_peak_rss_mib"] = entry["train"]["peak_rss_mib"]
    if "serve" in entry:
        costs["serve_p99_c32_ms"] = entry["serve"]["c32"]["p99_ms"]
        costs["serve_p99_c1_ms"] = entry["serve"]["c1"]["p99_ms"]
        costs["serve_cpu_ms_per_request"] = entry["serve"]["c32"]["worker_cpu_ms_per_request"]
        costs["serve_worker_rss_mib"] = entry["serve"]["worker_rss_after_mib"]
        costs["serve_startup_s"] = entry["serve"]["startup_s"]
    return costs


def fits(measured: list[dict[str, Any]]) -> dict[str, PowerLaw]:
    laws = {}
    for key in FITTED:
        points = [(e["events"], e["costs"][key]) for e in measured if key in e["costs"]]
        if len({size for size, _ in points}) >= 2:
            laws[key] = fit_power_law([p[0] for p in points], [p[1] for p in points])
    return laws


def extrapolated_entry(copies: int, laws: dict[str, PowerLaw]) -> dict[str, Any]:
    events = copies * ML1M_EVENTS
    return {"copies": copies, "events": events, "users": copies * 6040, "extrapolated": True,
            "note": "not measured: every cost is the fitted power law at this size",
            "costs": {key: float(f"{law.at(events):.3g}") for key, law in laws.items()}}


def rebuild(payload: dict[str, Any], extrapolate: Sequence[int]) -> dict[str, Any]:
    measured = sorted((e for e in payload.get("sizes", []) if not e.get("extrapolated")),
                      key=lambda e: e["copies"])
    for entry in measured:
        entry["costs"] = flat_costs(entry)
    laws = fits(measured)
    done = {e["copies"] for e in measured}
    extra = [extrapolated_entry(c, laws) for c in extrapolate if c not in done]
    payload["sizes"] = measured + extra
    payload["fits"] = {key: {**law.as_dict(key not in TOTALS), "what": FITTED[key]}
                       for key, law in laws.items()}
    return payload


PLOTS = {
    "scale_batch.png": [
        ("Batch jobs: wall time (stretched by the shared machine's load)", "seconds",
         {"import": "import_s", "drift scan, 1 process": "scan_single_s",
          "drift scan, Ray (2 CPUs)": "scan_ray_s", "training epoch": "train_epoch_s",
          "snapshot read": "snapshot_read_s"}),
        ("Batch jobs: CPU time", "CPU seconds",
         {"import (client + PostgreSQL)": "import_cpu_s",
          "training epoch (one thread)": "train_epoch_cpu_s",
          "drift scan, 1 process": "scan_single_cpu_s"}),
    ],
    "scale_serving.png": [
        ("Per-request and per-user costs", "milliseconds",
         {"/recommend p99, c=32": "serve_p99_c32_ms", "/recommend p99, c=1": "serve_p99_c1_ms",
          "worker CPU per /recommend": "serve_cpu_ms_per_request",
          "drift scan CPU per user": "scan_cpu_ms_per_user"}),
        ("Memory", "MiB",
         {"importer peak RSS": "import_peak_rss_mib", "training peak RSS": "train_peak_rss_mib",
          "serving worker RSS": "serve_worker_rss_mib"}),
    ],
}


def write_plots(payload: dict[str, Any], extrapolate_to: float | None) -> list[str]:
    measured = [e for e in payload["sizes"] if not e.get("extrapolated")]
    laws = {key: PowerLaw(f["coefficient"], f["exponent"], f["r2"], f["points"])
            for key, f in payload["fits"].items()}
    written = []
    for filename, groups in PLOTS.items():
        panels = []
        for title, ylabel, keys in groups:
            series = {name: (([e["events"] for e in measured if key in e["costs"]],
                              [e["costs"][key] for e in measured if key in e["costs"]]),
                             laws[key])
                      for name, key in keys.items() if key in laws}
            if series:
                panels.append((title, ylabel, series))
        if panels:
            written.append(str(plot(panels, ROOT / "docs" / filename, extrapolate_to)
                               .relative_to(ROOT)))
    return written


# Columns of the two tables: (header, cost keys shown "a / b" in one cell).
WALL_COLUMNS = [("import s", ("import_s",)), ("events/s", ("import_events_per_s",)),
                ("drift scan, 1 process, s", ("scan_single_s",)),
                ("drift scan, Ray, s", ("scan_ray_s",)), ("epoch s", ("train_epoch_s",)),
                ("snapshot read s", ("snapshot_read_s",)),
                ("/recommend p99 c32 / c1, ms", ("serve_p99_c32_ms", "serve_p99_c1_ms")),
                ("start-up s", ("serve_startup_s",))]
CPU_COLUMNS = [("import CPU s", ("import_cpu_s",)),
               ("import CPU µs/event", ("import_cpu_us_per_event",)),
               ("importer RSS MiB", ("import_peak_rss_mib",)),
               ("scan CPU ms/user", ("scan_cpu_ms_per_user",)),
               ("epoch CPU s", ("train_epoch_cpu_s",)), ("step CPU s", ("train_step_cpu_s",)),
               ("training RSS MiB", ("train_peak_rss_mib",)),
               ("worker CPU ms/request", ("serve_cpu_ms_per_request",)),
               ("worker RSS MiB", ("serve_worker_rss_mib",))]


def _cell(costs: dict[str, float], keys: Sequence[str]) -> str:
    def one(key: str) -> str:
        if key not in costs:
            return "-"
        value = costs[key]
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else (
            f"{value:.2f}")

    return " / ".join(one(k) for k in keys)


def markdown_table(payload: dict[str, Any]) -> str:
    """The wall-clock table, the CPU and memory table, and the fits, as Markdown."""
    lines: list[str] = []
    for columns in (WALL_COLUMNS, CPU_COLUMNS):
        lines.append("| size | events | " + " | ".join(h for h, _ in columns) + " |")
        lines.append("|---|---|" + "---|" * len(columns))
        for entry in payload["sizes"]:
            label = f"x{entry['copies']}" + (" (extrapolated)" if entry.get("extrapolated")
                                             else "")
            cells = [_cell(entry["costs"], keys) for _, keys in columns]
            lines.append(f"| {label} | {entry['events']:,} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("| cost | log-log slope b | growth | r² | points |")
    lines.append("|---|---|---|---|---|")
    for fit in payload["fits"].values():
        lines.append(f"| {fit['what']} | {fit['exponent']:.2f} | {fit['growth']} | "
                     f"{fit['r2']:.3f} | {fit['points']} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- main
def drop_everything() -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        names = [row[0] for row in admin.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'scale\\_x%'")]
        for name in names:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    shutil.rmtree(WORK, ignore_errors=True)
    print(f"dropped {names or 'no database'} and {WORK}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,2,4", help="copies of ML-1M's users, e.g. 1,2,4")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"some of {STAGES}")
    parser.add_argument("--extrapolate", default="16",
                        help="sizes filled in from the fits when not measured")
    parser.add_argument("--registry", type=Path, default=None,
                        help="MLflow store (folder with mlflow.db and artifacts/) holding the "
                        "champion; default: this checkout's var/mlflow")
    parser.add_argument("--scan-sample", type=int, default=400, help="users per scan")
    parser.add_argument("--ray-scan-sample", type=int, default=2000,
                        help="users of the Ray scan (0: --scan-sample)")
    parser.add_argument("--scan-modes", default="single,ray")
    parser.add_argument("--ray-worker-niceness", type=int, default=0,
                        help="added to the Ray workers' niceness (Ray's default: 15)")
    parser.add_argument("--train-steps", type=int, default=12)
    parser.add_argument("--eval-users", type=int, default=600)
    parser.add_argument("--serve-requests", type=int, default=500,
                        help="distinct users asked at c=32 (a fifth of that at c=1)")
    parser.add_argument("--output", default="scale", help="bench/results/<output>.json")
    parser.add_argument("--report-only", action="store_true",
                        help="refit, plot and print the table from the result file")
    parser.add_argument("--drop", action="store_true",
                        help="drop the scale_x* databases and var/scale, then exit")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.drop:
        drop_everything()
        return
    registry = args.registry or ROOT / "var" / "mlflow"
    stages = [s for s in args.stages.split(",") if s]
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise SystemExit(f"unknown stages {sorted(unknown)}; choose from {STAGES}")
    path = RESULTS / f"{args.output}.json"
    payload: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    by_copies = {e["copies"]: e for e in payload.get("sizes", []) if not e.get("extrapolated")}
    for copies in ([] if args.report_only else [int(s) for s in args.sizes.split(",")]):
        entry = by_copies.setdefault(copies, {"copies": copies})
        entry.update(events=copies * ML1M_EVENTS, users=copies * 6040)
        for stage in STAGES:
            if stage not in stages:
                continue
            print(f"x{copies}: {stage} ...", flush=True)
            started = time.perf_counter()
            if stage == "generate":
                entry.update(stage_generate(copies))
            elif stage == "import":
                entry.update(stage_import(copies))
            elif stage == "train":
                entry.update(stage_train(copies, args))
            elif stage == "scan":
                entry.update(stage_scan(copies, args, registry, entry.get("scan")))
            else:
                entry.update(stage_serve(copies, args, registry))
            print(f"x{copies}: {stage} done in {time.perf_counter() - started:.0f} s: "
                  f"{json.dumps(entry.get(stage), default=str)[:600]}", flush=True)
            payload["sizes"] = sorted(by_copies.values(), key=lambda e: e["copies"])
            payload = rebuild(payload, [])
            path.write_text(json.dumps(payload, indent=2) + "\n")  # after every stage
    payload["sizes"] = sorted(by_copies.values(), key=lambda e: e["copies"])
    extrapolate = [int(s) for s in args.extrapolate.split(",") if s]
    payload = rebuild(payload, extrapolate)
    payload.update({
        "benchmark": "cost growth with store size: MovieLens-1M users replicated with id "
                     "offsets (bench/replicate.py), PostgreSQL 15 on 127.0.0.1",
        "command": "python -m bench.scale --sizes 1,2,4 (make bench-scale)",
        "machine": {**machine(), "note": "2 CPU cores shared with a high-priority training "
                    "run and other engineers' jobs; every heavy child ran under nice -n 10 "
                    "with OMP_NUM_THREADS=1; load averages are recorded per stage"},
        "registry": str(registry),
        "runs": "2026-12-01 12:30-14:55 UTC: generate,import,train for 1,2,4 (train of x1 "
                "again later, for its CPU figures), then scan,serve with the ML-1M champion "
                "(v1 of /work/main/var/mlflow, copied to var/scale_registry with its paths "
                "rewritten), then the Ray scans again with RAY_worker_niceness=0 and a sample "
                "of 2,000 (the first Ray figures, at Ray's default niceness, are kept as "
                "ray_worker_niceness_15); x5: bench/import_5m.py"})
    payload["plots"] = write_plots(payload, max(extrapolate, default=0) * ML1M_EVENTS or None)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(markdown_table(payload))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
