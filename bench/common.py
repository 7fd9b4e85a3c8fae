"""Helpers for the benchmark scripts: fresh databases, a uvicorn subprocess (ours or MLflow's
scoring server), CPU seconds of process trees from /proc, the load average and the tasks
it counts, result files."""

from __future__ import annotations

import collections
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


def process_table(proc: Path = Path("/proc")) -> dict[int, ProcessCpu]:
    """Every process this machine shows (``proc``: its /proc), by pid."""
    ticks = float(os.sysconf("SC_CLK_TCK"))
    table = {}
    for stat in proc.glob("[0-9]*/stat"):
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


class LoadedTask(NamedTuple):
    """A task (thread) that Linux's load average counts: running or runnable (R) or in
    uninterruptible sleep (D)."""

    pid: int  # its process
    tid: int
    state: str
    process: str  # the process's name (comm)


def loaded_tasks(table: dict[int, ProcessCpu], proc: Path = Path("/proc")
                 ) -> list[LoadedTask]:
    """Every R or D task of the processes in ``table`` (``process_table``), read from
    ``proc``; a task that ends while it is read is skipped."""
    tasks = []
    for pid, entry in table.items():
        for stat in (proc / str(pid) / "task").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError):  # ended meanwhile
                state = stat.read_text().rpartition(")")[2].split()[0]
                if state in ("R", "D"):
                    tasks.append(LoadedTask(pid, int(stat.parent.name), state, entry.name))
    return tasks


class TaskShares:
    """Who the load average counts, sample by sample: the R and D tasks of a process tree
    (``root`` and its descendants, less the sampling thread) and of everything else on the
    machine, with the processes that contribute most of the rest. A load figure over the
    tree's own threads names the other processes that lifted it."""

    def __init__(self, root: int, proc: Path = Path("/proc"), top: int = 6) -> None:
        self.root, self.proc, self.top = root, proc, top
        self.samples = 0
        self.own_sum = self.others_sum = 0
        self.own_max = self.others_max = 0
        self.others_by_process: collections.Counter[str] = collections.Counter()
        # the last minute of samples: what the 1-minute load average mostly weighs
        self.recent: collections.deque[tuple[int, int]] = collections.deque(maxlen=60)
        self._sampler: int | None = None

    def sample(self) -> tuple[int, int]:
        """One sample: (the tree's R+D tasks, everyone else's)."""
        table = process_table(self.proc)
        tree = descendants(table, self.root)
        own = others = 0
        for task in loaded_tasks(table, self.proc):
            if task.tid == self._sampler:
                continue
            if task.pid in tree:
                own += 1
            else:
                others += 1
                self.others_by_process[task.process] += 1
        self.samples += 1
        self.own_sum += own
        self.others_sum += others
        self.own_max, self.others_max = max(self.own_max, own), max(self.others_max, others)
        self.recent.append((own, others))
        return own, others

    def recent_means(self) -> dict[str, float]:
        """The tree's and the others' mean R+D tasks over the recent samples."""
        n = max(len(self.recent), 1)
        return {"run_mean": round(sum(o for o, _ in self.recent) / n, 2),
                "others_mean": round(sum(x for _, x in self.recent) / n, 2)}

    def exclude_thread(self, native_id: int) -> None:
        """Leave the thread that takes the samples out of the tree's count."""
        self._sampler = native_id

    def summary(self) -> dict[str, Any]:
        n = max(self.samples, 1)
        return {"samples": self.samples,
                "run_mean": round(self.own_sum / n, 2), "run_max": self.own_max,
                "others_mean": round(self.others_sum / n, 2), "others_max": self.others_max,
                "others_by_process": {name: round(count / n, 3) for name, count
                                      in self.others_by_process.most_common(self.top)}}


class LoadWatch:
    """The highest 1-minute load average seen while in the block (sampled every second), the
    seconds into the block it was seen at, and with ``series_every_s`` a (seconds, load)
    sample that often, to place a peak in a long run's log. With ``tasks_of`` (a pid) it also
    counts, each sample, the R and D tasks of that process tree and of everything else
    (``TaskShares``): what the load average was made of."""

    def __init__(self, every_s: float = 1.0, series_every_s: float | None = None,
                 tasks_of: int | None = None) -> None:
        self.every_s = every_s
        self.series_every_s = series_every_s
        self.peak = 0.0
        self.peak_at_s = 0.0
        self.series: list[tuple[float, float]] = []
        self.tasks = TaskShares(tasks_of) if tasks_of is not None else None
        self.tasks_before_peak: dict[str, float] | None = None  # the minute up to the peak
        self._start = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _sample(self) -> None:
        at, load = time.perf_counter() - self._start, os.getloadavg()[0]
        if self.tasks is not None:
            self.tasks.sample()
        if load > self.peak:
            self.peak, self.peak_at_s = load, at
            if self.tasks is not None:
                self.tasks_before_peak = self.tasks.recent_means()
        if self.series_every_s is not None and (
                not self.series or at - self.series[-1][0] >= self.series_every_s):
            self.series.append((round(at, 1), round(load, 2)))

    def _watch(self) -> None:
        if self.tasks is not None:
            self.tasks.exclude_thread(threading.get_native_id())
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
