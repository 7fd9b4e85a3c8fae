"""CPU time of the event-then-recommend pair through the real app, in one process: for
profiling (py-spy) and for before/after timings of the pair's path.

    python -m bench.profile_pair                          # median CPU ms per pair
    python -m bench.profile_pair --seconds 40            # pairs for 40 s, to profile
    py-spy record --pid PID --duration 20 -o out.svg    # once it says the pairs have begun

A pair is `POST /events` (one new event for a user, its timestamp after every earlier one)
then `GET /recommend/{that user}`, sent as ASGI calls to the app `create_app` builds, inside
its lifespan, on this process's event loop: the middleware, the routes and their
dependencies, the thread pool, the store's SQL against a fresh PostgreSQL database, the
change feed's LISTEN connection, the impression writer and the served-version object all run
as they do under uvicorn (only uvicorn's HTTP parsing and the socket are not there).

The champion is one the app loads from an MLflow registry: the tiny config (configs/tiny.yaml,
ml-100k's 40 tiny users) trained with the served champion's drift kind, `bocpd`, and with
the drift window of configs/ml100k.yaml (200 events), so a 50-event user is read whole as
there. Training takes a few minutes; `--registry DIR` keeps the registry in DIR and reuses
it on later runs. The store holds ml-100k's catalogue and the tiny users, and `--users` users
seeded with `--events` events each.

Figures, per pair: `service_cpu_ms` is the median of `time.process_time` around each pair
(this process: the app's event loop, its thread pool and its background threads, and the
few microseconds of the ASGI calls); `service_cpu_ms_mean` the total over a round divided
by its pairs (background work that ends after a pair's window, such as the impression
writer's inserts, is counted there);
`postgres_cpu_ms` the CPU seconds (user + system, from /proc) of the PostgreSQL backends
connected to the bench's database over a round divided by its pairs (only whole ticks of
10 ms each are counted, so per round, not per pair; other clients of the server are left
out). Each figure is the median over `--rounds` rounds. The machine may be shared:
compare two versions of the code in the same conditions, alternating, and read the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# before numpy and torch start their thread pools
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import psycopg

from app.core.config import PROJECT_ROOT, Settings
from bench.common import PG_ADMIN_URL, fresh_database, parse_stat

DRIFT_KIND = "bocpd"  # configs/ml100k.yaml's drift kind
DRIFT_WINDOW = 200  # configs/ml100k.yaml drift.splice.max_unspliced: the events a request reads


def train_champion(root: Path) -> tuple[str, str]:
    """The tiny config trained with the served drift kind and window, registered and promoted
    in an MLflow registry under `root` (reused when one is there): (tracking URI, artifact
    root)."""
    tracking, artifacts = f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts")
    if (root / "trained").exists():
        return tracking, artifacts
    from app.store.migrate import upgrade_head
    from tests.conftest import tiny_store
    from training.config import load_config
    from training.pipeline import run_training
    from training.registry import MlflowTarget

    root.mkdir(parents=True, exist_ok=True)
    store_url = f"sqlite:///{root / 'store.db'}"
    upgrade_head(store_url)
    tiny_store(store_url)
    config = load_config(PROJECT_ROOT / "configs" / "tiny.yaml")
    config.drift.kind = DRIFT_KIND
    config.drift.splice.max_unspliced = DRIFT_WINDOW
    config.run.output_dir = str(root / "runs")
    run_training(config, device="cpu", register=True, promote=True, progress=False,
                 target=MlflowTarget(tracking, artifacts), log=lambda _: None,
                 database_url=store_url)
    (root / "trained").touch()
    return tracking, artifacts


@contextlib.contextmanager
def registry(path: str | None) -> Iterator[tuple[str, str]]:
    if path is not None:
        yield train_champion(Path(path))
        return
    with tempfile.TemporaryDirectory() as work:
        yield train_champion(Path(work))


class AsgiClient:
    """Requests straight to the ASGI app on this event loop (what uvicorn hands the app after
    parsing HTTP), so the figures hold the app's work and little else: no HTTP client, no
    socket, no thread between the caller and the app."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        headers = [(b"host", b"testserver"), (b"content-length", str(len(body)).encode())]
        if body:
            headers.append((b"content-type", b"application/json"))
        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
                 "http_version": "1.1", "method": method, "scheme": "http",
                 "server": ("testserver", 80), "client": ("127.0.0.1", 50000),
                 "root_path": "", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "headers": headers, "state": {}}
        sent = False
        status, chunks = 0, []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:  # the app only asks again to learn of a disconnect
                await asyncio.Event().wait()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return status, b"".join(chunks)


class Pairs:
    """Seeded users and the pairs made for them."""

    def __init__(self, client: AsgiClient, item_ids: list[str], users: int, seed: int
                 ) -> None:
        self.client = client
        self.items = item_ids
        self.rng = random.Random(seed)
        self.users = [f"pair-u{i}" for i in range(users)]
        # every event is later than the one before: seeds first, then one second per pair
        self.clock = datetime.now(UTC) - timedelta(days=20)
        self.serial = 0

    async def seed(self, events: int) -> None:
        """`events` events for every user, then one recommendation each: a served user has a
        drift state to carry forward (the first read of a user replays its whole window, a
        cost a steady state pays once per user)."""
        for user in self.users:
            await self._post([self._event(user) for _ in range(events)])
        for user in self.users:
            await self._recommend(user)

    def _event(self, user: str) -> dict[str, Any]:
        self.clock += timedelta(seconds=1)
        self.serial += 1
        return {"event_id": f"pair-{self.serial}", "user_id": user,
                "item_id": self.rng.choice(self.items), "type": "view",
                "timestamp": self.clock.isoformat()}

    async def _post(self, events: list[dict[str, Any]]) -> None:
        status, body = await self.client.request(
            "POST", "/events", json.dumps({"events": events}).encode())
        if status != 200 or json.loads(body)["accepted"] != len(events):
            raise RuntimeError(f"POST /events: {status} {body!r}")

    async def pair(self) -> None:
        user = self.rng.choice(self.users)
        await self._post([self._event(user)])
        await self._recommend(user)

    async def _recommend(self, user: str) -> None:
        status, body = await self.client.request("GET", f"/recommend/{user}")
        if status != 200 or not json.loads(body)["items"]:
            raise RuntimeError(f"GET /recommend: {status} {body!r}")


class DatabaseCpu:
    """CPU seconds of the PostgreSQL backends connected to one database (the app's pool and
    its listener), from /proc: other clients of the same server (tests, other benches) are
    not counted, nor are the server's own helpers (a commit's WAL flush is its backend's).
    A backend that starts between two readings counts from its start."""

    def __init__(self, url: str) -> None:
        self.database = url.rsplit("/", 1)[1]
        self.connection = psycopg.connect(PG_ADMIN_URL, autocommit=True)

    def seconds(self) -> dict[int, float]:
        pids = [pid for (pid,) in self.connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (self.database,))]
        ticks = float(os.sysconf("SC_CLK_TCK"))
        found = {}
        for pid in pids:
            with contextlib.suppress(OSError, ValueError, IndexError):  # ended meanwhile
                found[pid] = parse_stat(Path(f"/proc/{pid}/stat").read_text(), ticks).cpu_s
        return found

    @staticmethod
    def spent(before: dict[int, float], after: dict[int, float]) -> float:
        return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


async def measure_round(pairs: Pairs, database: DatabaseCpu, count: int) -> dict[str, float]:
    """One round of `count` pairs: the median and mean CPU ms of this process per pair, and
    the database's backends' CPU ms per pair."""
    spent = []
    backends, begun = database.seconds(), time.process_time()
    for _ in range(count):
        start = time.process_time()
        await pairs.pair()
        spent.append(time.process_time() - start)
    total = time.process_time() - begun
    used = DatabaseCpu.spent(backends, database.seconds())
    return {"service_cpu_ms": 1000 * statistics.median(spent),
            "service_cpu_ms_mean": 1000 * total / count,
            "postgres_cpu_ms": 1000 * used / count}


async def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from app.main import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        champion = app.state.runtime.models.current
        pairs = Pairs(AsgiClient(app), list(champion.bundle.item_ids), args.users, args.seed)
        await pairs.seed(args.events)
        for _ in range(args.warmup):
            await pairs.pair()
        out: dict[str, Any] = {"drift_kind": type(champion.bundle.drift_detector).__name__,
                               "users": args.users, "seeded_events": args.events}
        if args.seconds > 0:
            # a profiler attached now (py-spy record --pid) sees the pairs alone
            print(f"pairs from now on, for {args.seconds:g} s", file=sys.stderr, flush=True)
            stop, done = time.monotonic() + args.seconds, 0
            while time.monotonic() < stop:
                await pairs.pair()
                done += 1
            out["pairs"] = done
            return out
        database = DatabaseCpu(settings.database_url)
        try:
            rounds = [await measure_round(pairs, database, args.pairs)
                      for _ in range(args.rounds)]
        finally:
            database.connection.close()
        out.update({key: round(statistics.median(r[key] for r in rounds), 3)
                    for key in rounds[0]})
        out["rounds"] = [{k: round(v, 3) for k, v in r.items()} for r in rounds]
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--registry", default=None,
                        help="keep the trained champion's registry here and reuse it")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--events", type=int, default=50, help="seeded events per user")
    parser.add_argument("--pairs", type=int, default=200, help="pairs per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=0.0,
                        help="make pairs for this long instead (for a profiler)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="the app's intra-op threads (1: what each of bench/serve.py's two "
                        "workers gets on a 2-core machine)")
    args = parser.parse_args()

    import torch

    from tests.conftest import tiny_store

    torch.set_num_threads(1)
    with (registry(args.registry) as (tracking, artifacts),
          tempfile.TemporaryDirectory() as work,
          fresh_database("postgresql", Path(work)) as url):
        tiny_store(url)  # ml-100k's catalogue (and the tiny users' events)
        settings = Settings(database_url=url, mlflow_tracking_uri=tracking,
                            mlflow_artifact_root=artifacts, model_poll_seconds=0,
                            data_cache_dir=Path(work) / "cache",
                            torch_threads=args.torch_threads)
        out = asyncio.run(run(args, settings))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
