"""The drift scan on Ray (issue 17): the same checks and records as the single-process scan,
resumable, on a local cluster of 2 CPUs (`ray.init(num_cpus=2)`), against PostgreSQL (where
Ray Data reads the users in hash shards).

Not skipped: `ray` is in the `ray` extra, which `make test` installs (requirements-dev.lock).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.services.drift_scan import all_user_ids, scan_users
from app.services.model_manager import ModelManager
from app.store.db import make_engine, make_session_factory
from app.store.models import DriftCheck, DriftRecord
from tests.bundles import alarm_on_every_event
from tests.conftest import TinyModel, scratch_pg_database, tiny_model_database, tiny_store

pytestmark = pytest.mark.postgres
INTERRUPTED_AFTER = 7  # users the "interrupted" first run checked before the Ray scan resumes


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    import ray

    from app.services.drift_scan_ray import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


def _champion(settings: Settings, factory: sessionmaker[Session]) -> Any:
    manager = ModelManager(settings, factory, alarm_on_every_event)
    manager.reload()
    return manager.current


def _stored(factory: sessionmaker[Session]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Checks and records, without their ids: what each scan must leave identical."""
    with factory() as session:
        records = {r.id: r for r in session.scalars(select(DriftRecord))}
        checks = sorted(
            (c.user_id, c.checked_at, c.model_version, c.drift_detected,
             records[c.record_id].change_event_id if c.record_id else None)
            for c in session.scalars(select(DriftCheck)))
        kept = sorted(
            (r.user_id, r.detected_at, r.model_version, round(r.score, 6), r.threshold, r.kind,
             r.change_event_id, r.change_at, r.change_index,
             sorted((k, round(v, 6)) for k, v in r.interests_before.items()),
             sorted((k, round(v, 6)) for k, v in r.interests_after.items()))
            for r in records.values())
    return checks, kept


def test_the_ray_scan_leaves_what_the_single_process_scan_leaves_and_resumes(
        tiny_model: TinyModel, tmp_path: Path, ray_cluster: None) -> None:
    from app.services.drift_scan_ray import scan_with_ray

    with tiny_model_database(tiny_model, tmp_path, "rayscan") as (settings, _), \
            scratch_pg_database("rayscan_ref") as reference_url:
        engines = [make_engine(url) for url in (reference_url, settings.database_url)]
        reference, scanned = (make_session_factory(e) for e in engines)
        try:
            for url in (reference_url, settings.database_url):
                tiny_store(url)
            model = _champion(settings, reference)
            users = all_user_ids(reference)
            expected = scan_users(reference, model, users, backfill=True)
            assert expected.drifts > 0

            # An "interrupted" scan checked the first users; the Ray scan does the rest.
            scan_users(scanned, _champion(settings, scanned), users[:INTERRUPTED_AFTER],
                       backfill=True)
            progress: list[int] = []
            report = scan_with_ray(settings, model.version, unchecked_only=True, batch_size=8,
                                   on_users=progress.append, load_bundle=alarm_on_every_event)
            assert report.users == len(users) - INTERRUPTED_AFTER == sum(progress)
            assert len(progress) > 1  # several batches, counted as they came back
            assert _stored(scanned) == _stored(reference)
            assert all_user_ids(scanned, unchecked_only=True) == []
        finally:
            for engine in engines:
                engine.dispose()


def test_the_service_and_the_default_scan_never_import_ray() -> None:
    import subprocess
    import sys

    from app.core.config import PROJECT_ROOT

    code = ("import sys, app.main, app.__main__, app.services.drift_scan, training.pipeline; "
            "app.main.create_app; "
            "loaded = [m for m in sys.modules if m == 'ray' or m.startswith('ray.')]; "
            "assert not loaded, loaded")
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
