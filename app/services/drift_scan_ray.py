"""The batch drift scan on Ray (`python -m app drift-scan --ray [--address ADDR]`).

The same checks as the single-process scan (app.services.drift_scan), spread over a Ray
cluster; a local one (`ray.init(num_cpus=...)`) when no address is given:

- Ray Data reads the users to scan from the store (`read_sql`, SQL from app.store.scan_source)
  in shards by a hash of `user_id` (one read task per shard on PostgreSQL; SQLite reads in one);
- an actor pool (`map_batches`) checks them: each actor loads the champion once through the
  one model-loading path (ModelManager), on a GPU when the cluster has one, and checks a batch
  of users in one transaction (`scan_batch`: the batch's checks and records commit together);
- the driver counts the batches as they come back (progress) and sums the report.

Resumable like the single-process scan: with `unchecked_only` only users without a check are
read, and an interruption loses at most the batches in flight. Every actor must load the
version the driver resolved; a champion that moves during the scan fails it rather than mixing
versions.

`ray` is imported here only, inside the functions: the service and the default scan never
import it (it is the optional `ray` extra).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.core.config import PROJECT_ROOT, Settings
from app.ml.bundle import InterestModelBundle
from app.services.drift_scan import ScanReport, scan_batch
from app.services.model_manager import ModelManager
from app.store import scan_source
from app.store.db import make_engine, make_session_factory

DEFAULT_BATCH_SIZE = 64
OBJECT_STORE_BYTES = 256 * 1024**2  # a local cluster's object store: batches of user ids only


def local_runtime_env() -> dict[str, Any]:
    """Workers import this checkout of the project (not another installed copy)."""
    path = os.environ.get("PYTHONPATH")
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), path) if p),
                         "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}}


def init_ray(address: str | None = None, num_cpus: int | None = 2) -> None:
    """Connect to the cluster at `address`, or start a local one of `num_cpus` CPUs (no
    dashboard, a small object store); nothing when Ray is already initialised."""
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, runtime_env=local_runtime_env())
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 object_store_memory=OBJECT_STORE_BYTES, runtime_env=local_runtime_env())


class DriftScanActor:
    """One actor of the pool: an engine of its own and the champion, loaded once."""

    def __init__(self, settings: Settings, version: str,
                 load_bundle: Callable[[Path, str], InterestModelBundle] | None = None) -> None:
        small_pool = {} if settings.database_url.startswith("sqlite") else {
            "pool_size": 2, "max_overflow": 0}
        self.engine = make_engine(settings.database_url, **small_pool)
        self.factory = make_session_factory(self.engine)
        manager = ModelManager(settings, self.factory, load_bundle, with_challenger=False)
        outcome = manager.reload()
        if manager.loaded is None:
            raise RuntimeError(f"no model to scan with: {outcome.error}")
        if manager.current.version != version:
            raise RuntimeError(f"the champion moved during the scan: v{version} on the "
                               f"driver, v{manager.current.version} here")
        self.model = manager.current

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        report = scan_batch(self.factory, self.model, [str(u) for u in batch["user_id"]],
                            backfill=True)
        return {"users": np.array([report.users]), "drifts": np.array([report.drifts]),
                "skipped": np.array([report.skipped])}


def scan_with_ray(settings: Settings, version: str, *, unchecked_only: bool = False,
                  actors: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                  shards: int | None = None, user_ids: Sequence[str] | None = None,
                  on_users: Callable[[int], None] = lambda _: None,
                  load_bundle: Callable[[Path, str], InterestModelBundle] | None = None
                  ) -> ScanReport:
    """Check every stored user (`unchecked_only`: those without a check) with model
    `version` (the champion, which each actor loads) on the initialised Ray cluster
    (`init_ray`); `user_ids`: only these stored users. `on_users(n)`: n more users were
    checked (progress). `load_bundle`:
    ModelManager's, picklable (a module-level function), for what-if scans and tests."""
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 1)), int(resources.get("GPU", 0))
    engine = make_engine(settings.database_url)
    try:
        sql = scan_source.users_to_scan_sql(engine, unchecked_only, user_ids)
    finally:
        engine.dispose()
    hash_fn = scan_source.shard_hash_function(settings.database_url)
    sharding: dict[str, Any] = {"override_num_blocks": 1} if hash_fn is None else {
        "shard_keys": [scan_source.SHARD_KEY], "shard_hash_fn": hash_fn,
        "override_num_blocks": shards or max(2, 2 * int(cpus))}
    dataset = ray.data.read_sql(
        sql, functools.partial(scan_source.dbapi_connection, settings.database_url),
        num_cpus=0.25, **sharding)
    if gpus:  # GPU actors: one per GPU (batch_size is required with GPUs, ray #42340)
        pool, compute = {"num_gpus": 1}, gpus if actors is None else min(actors, gpus)
    else:  # leave a quarter CPU for the read tasks
        count = actors or max(1, int(cpus))
        pool, compute = {"num_cpus": min(1.0, max(0.25, (cpus - 0.25) / count))}, count
    checked = dataset.map_batches(
        DriftScanActor, batch_size=batch_size, concurrency=compute,
        fn_constructor_kwargs={"settings": settings, "version": version,
                               "load_bundle": load_bundle}, **pool)
    users = drifts = skipped = 0
    for row in checked.iter_rows():
        users, drifts, skipped = (users + int(row["users"]), drifts + int(row["drifts"]),
                                  skipped + int(row["skipped"]))
        on_users(int(row["users"]) + int(row["skipped"]))
    return ScanReport(users=users, drifts=drifts, skipped=skipped)
