"""Helpers for the benchmark scripts: fresh databases, a uvicorn subprocess, result files."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


@contextlib.contextmanager
def running_service_process(env: dict[str, str], workers: int = 1, timeout: float = 180.0,
                            root: Path | None = None
                            ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`running_service`, also yielding the process (to read its workers' memory); `root`:
    serve that checkout's code (default: this one)."""
    port = free_port()
    command = [sys.executable, "-m", "app", "serve", "--port", str(port),
               "--workers", str(workers)]
    process = subprocess.Popen(command, cwd=root or ROOT, env={**os.environ, **env},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"service exited: {process.stderr.read().decode()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    yield base, process
                    return
            time.sleep(0.5)
        raise RuntimeError("service did not become ready in time")
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
