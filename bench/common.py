"""Helpers for the benchmark scripts: fresh databases, a uvicorn subprocess (ours or MLflow's
scoring server), CPU seconds of process trees from /proc, the load average, result files."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import psycopg

from app.store.migrate import upgrade_head

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PG_ADMIN_URL = os.environ.get("DRIFTREC_BENCH_PG_ADMIN_URL",
                              "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.contextmanager
def fresh_database(backend: str, workdir: Path) -> Iterator[str]:
    """A new, migrated database on `backend` ("postgresql" or "sqlite"), removed afterwards."""
    if backend == "sqlite":
        path = workdir / f"bench-{uuid.uuid4().hex[:8]}.db"
        url = f"sqlite:///{path}"
        upgrade_head(url)
        try:
            yield url
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    name = f"driftrec_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        url = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
        url = f"{url}/{name}"
        try:
            upgrade_head(url)
            yield url
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_service(env: dict[str, str], workers: int = 1,
                    timeout: float = 180.0) -> Iterator[str]:
    """Start `python -m app serve` on 127.0.0.1 and yield its base URL once it is ready."""
    with running_service_process(env, workers, timeout) as (base, _):
        yield base


def rss_mib(pid: int) -> float:
    """Resident memory of one process (Linux /proc), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for {pid}")


def worker_pids(pid: int) -> list[int]:
    """The uvicorn worker processes of a `serve` process (itself when it has no children)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    # workers are spawned processes; multiprocessing's resource tracker is not one
    workers = [int(c) for c in children
               if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
    return workers or [pid]


def _ready(base: str, path: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{base}{path}", timeout=2).status_code == 200
    return False


@contextlib.contextmanager
def _running_server(command: list[str], env: dict[str, str], port: int, ready_path: str,
                    timeout: float, cwd: Path
                    ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start `command` (a server on 127.0.0.1:`port`), yield its base URL and process once
    `ready_path` answers 200; afterwards stop it and every process it started. Its stderr
    goes to a file (a pipe nobody reads could fill and stall it), shown if it fails."""
    name = " ".join(command[2:4])  # e.g. "app serve"
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, cwd=cwd, env={**os.environ, **env},
                                   stdout=subprocess.DEVNULL, stderr=errors)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    errors.seek(0)
                    raise RuntimeError(f"{name} exited: {errors.read().decode()[-2000:]}")
                if _ready(base, ready_path):
                    yield base, process
                    return
                time.sleep(0.5)
            raise RuntimeError(f"{name} did not become ready in time")
        finally:
            _stop_tree(process)


def _stop_tree(process: subprocess.Popen[bytes]) -> None:
    """Terminate a server process, then any process it started that is still running."""
    before = process_table()
    started = {pid: before[pid].name for pid in descendants(before, process.pid)
               if pid != process.pid}
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    time.sleep(0.5)
    after = process_table()
    for pid, name in started.items():
        if pid in after and after[pid].name == name:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


@contextlib.contextmanager
def running_service_process(env: dict[str, str], workers: int = 1, timeout: float = 180.0,
                            root: Path | None = None
                            ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`running_service`, also yielding the process (to read its workers' memory and CPU);
    `root`: serve that checkout's code (default: this one)."""
    port = free_port()
    command = [sys.executable, "-m", "app", "serve", "--port", str(port),
               "--workers", str(workers)]
    with _running_server(command, env, port, "/readyz", timeout, root or ROOT) as running:
        yield running


def download_model(tracking_uri: str, name: str, alias: str, dst: Path) -> tuple[Path, str]:
    """The registered version `name@alias` of the MLflow store at `tracking_uri`, downloaded
    into `dst` (never through MLflow's process-wide URIs): its folder and version number."""
    from mlflow.artifacts import download_artifacts

    from app.ml.loader import registry_client, resolve_version

    client = registry_client(tracking_uri)
    version = resolve_version(client, name, alias)
    location = client.get_model_version_download_uri(name, str(version.version))
    local = Path(download_artifacts(artifact_uri=location, dst_path=str(dst),
                                    tracking_uri=tracking_uri))
    # the folder holding MLmodel: the download itself or one level down
    found = [local] if (local / "MLmodel").exists() else [m.parent for m in local.glob("*/MLmodel")]
    if len(found) != 1:
        raise FileNotFoundError(f"no single MLmodel in the download of {name}@{alias}: {local}")
    return found[0], str(version.version)


@contextlib.contextmanager
def running_mlflow_server(model_dir: Path, workers: int = 1, timeout: float = 300.0
                          ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """MLflow's own scoring server for the model in `model_dir` (uvicorn over
    `mlflow.pyfunc.scoring_server`, `POST /invocations`): what `mlflow models serve
    --env-manager local` runs, started here as this process's child (the CLI's wrapper
    would orphan it when stopped), with this interpreter's packages; torch threads split
    over the workers as the service splits them."""
    from mlflow.pyfunc import scoring_server

    port = free_port()
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    line, env = scoring_server.get_cmd(str(model_dir), port, "127.0.0.1", None, workers)
    command = [sys.executable, "-m", *shlex.split(line)]  # line: "uvicorn --host ..."
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    with _running_server(command, env, port, "/ping", timeout, ROOT) as running:
        yield running


# ------------------------------------------------------------------------ CPU accounting
# Linux /proc, no psutil: a process's CPU seconds are user + system of itself plus those of
# its children that have ended and been waited for (utime, stime, cutime, cstime in
# /proc/<pid>/stat). Summed over a set of processes that includes the parent of any member
# that ends, a difference between two readings counts every process's CPU exactly once:
# a worker or database backend that ends between them moves its time into its parent's
# children's times, it does not vanish.


class ProcessCpu(NamedTuple):
    pid: int
    ppid: int
    name: str  # /proc/<pid>/comm: "postgres" for every PostgreSQL server process
    cpu_s: float  # user + system, its own and its waited-for children's


def parse_stat(line: str, ticks_per_s: float) -> ProcessCpu:
    """One /proc/<pid>/stat line ("pid (comm) state ppid ... utime stime cutime cstime
    ..."; comm may hold spaces and parentheses)."""
    head, _, rest = line.rpartition(")")
    pid, _, name = head.partition(" (")
    fields = rest.split()  # fields[0] is the state (field 3 of proc(5))
    ticks = sum(int(f) for f in fields[11:15])  # fields 14-17
    return ProcessCpu(int(pid), int(fields[1]), name, ticks / ticks_per_s)


def process_table() -> dict[int, ProcessCpu]:
    """Every process this machine shows, by pid."""
    ticks = float(os.sysconf("SC_CLK_TCK"))
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):  # ended meanwhile
            entry = parse_stat(stat.read_text(), ticks)
            table[entry.pid] = entry
    return table


def descendants(table: dict[int, ProcessCpu], root: int) -> set[int]:
    """`root` and every process below it (children, their children, ...) in `table`."""
    children: dict[int, list[int]] = {}
    for entry in table.values():
        children.setdefault(entry.ppid, []).append(entry.pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in table and pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def tree_cpu_seconds(table: dict[int, ProcessCpu], root: int) -> float:
    """CPU seconds of a process tree (a server and its workers, ended children included)."""
    return sum(table[pid].cpu_s for pid in descendants(table, root))


def named_cpu_seconds(table: dict[int, ProcessCpu], name: str) -> float:
    """CPU seconds of every process called `name` (for "postgres": the server, its
    backends and helpers, ended backends included through the postmaster)."""
    return sum(entry.cpu_s for entry in table.values() if entry.name == name)


class LoadWatch:
    """The highest 1-minute load average seen while in the block (sampled every second), the
    seconds into the block it was seen at, and with ``series_every_s`` a (seconds, load)
    sample that often, to place a peak in a long run's log."""

    def __init__(self, every_s: float = 1.0, series_every_s: float | None = None) -> None:
        self.every_s = every_s
        self.series_every_s = series_every_s
        self.peak = 0.0
        self.peak_at_s = 0.0
        self.series: list[tuple[float, float]] = []
        self._start = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _sample(self) -> None:
        at, load = time.perf_counter() - self._start, os.getloadavg()[0]
        if load > self.peak:
            self.peak, self.peak_at_s = load, at
        if self.series_every_s is not None and (
                not self.series or at - self.series[-1][0] >= self.series_every_s):
            self.series.append((round(at, 1), round(load, 2)))

    def _watch(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def __enter__(self) -> LoadWatch:
        self._start = time.perf_counter()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def max(self) -> float:
        return round(self.peak, 2)


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
