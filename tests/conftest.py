"""Shared fixtures: a fresh PostgreSQL database per test run, a fresh SQLite file per test.

PostgreSQL is required, never skipped: the store and API tests run against the real server
on 127.0.0.1:5432 (override with DRIFTREC_TEST_PG_ADMIN_URL).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import PROJECT_ROOT, Settings
from app.main import create_app
from app.store.db import make_engine
from app.store.migrate import upgrade_head
from app.store.models import Base

PG_ADMIN_URL = os.environ.get("DRIFTREC_TEST_PG_ADMIN_URL",
                              "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", "postgresql"]


def _pg_url(database: str) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{database}"


@contextlib.contextmanager
def scratch_pg_database(label: str) -> Iterator[str]:
    """Create a migrated database of our own on the real server; drop it afterwards."""
    name = f"driftrec_{label}_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        pytest.fail(f"PostgreSQL is required for the tests ({PG_ADMIN_URL}): {error}. Start "
                    "it: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        url = _pg_url(name)
        try:
            upgrade_head(url)
            yield url
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """This run's PostgreSQL database for the store and API tests (emptied before each)."""
    with scratch_pg_database("test") as url:
        yield url


def _truncate_all(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as connection:
        tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'driftrec.db'}"
        upgrade_head(url)
        yield url
        return
    url = request.getfixturevalue("pg_database")
    _truncate_all(url)
    yield url


@pytest.fixture
def factory(database_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on a migrated database (each backend) that knows users u1, u2 and u3."""
    from app.store.db import make_session_factory, transaction
    from app.store.repository import ensure_users

    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        ensure_users(session, ["u1", "u2", "u3"])
    yield sessions
    engine.dispose()


@pytest.fixture(scope="session")
def empty_registry(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An MLflow store with no model in it (created once: MLflow's own migrations are slow)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models()
    return uri


@pytest.fixture
def settings(database_url: str, tmp_path: Path, empty_registry: str) -> Settings:
    return Settings(database_url=database_url, data_cache_dir=tmp_path / "cache",
                    mlflow_tracking_uri=empty_registry,
                    mlflow_artifact_root=str(tmp_path / "artifacts"), model_poll_seconds=0)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def catalogue(client: TestClient) -> list[str]:
    items = [{"item_id": f"m{i}", "title": f"Movie {i}", "categories": ["Drama"]}
             for i in range(1, 6)]
    response = client.post("/items", json={"items": items})
    assert response.status_code == 200, response.text
    return [item["item_id"] for item in items]


# ----------------------------------------------------------------------------- models
@dataclass
class TinyModel:
    """One tiny training run (tiny config), registered and promoted in a temporary MLflow store.

    Shared by the training and serving tests: it is the slowest fixture of the suite.
    """

    report: Any
    target: Any
    root: Path
    store_url: str = ""  # the SQLite store it was trained from (the tiny users imported)


def tiny_store(url: str) -> None:
    """Import ml-100k's tiny users (and the whole catalogue) into a migrated store at `url`."""
    from app.store.db import make_session_factory
    from training.data.importer import import_movielens

    _, _, subset = tiny_users_data()
    engine = make_engine(url)
    try:
        import_movielens(subset, make_session_factory(engine), Settings(database_url=url),
                         progress=False)
    finally:
        engine.dispose()


def train_tiny(root: Path) -> tuple[Any, Any, str]:
    """Trained as a user would: ml-100k's tiny users imported into a (SQLite) store under
    `root` through the importer, then the tiny config trained from the store, registered and
    promoted: (report, MLflow target, store URL). The bench's schemathesis run uses it too."""
    from training.config import load_config
    from training.pipeline import run_training
    from training.registry import MlflowTarget

    store_url = f"sqlite:///{root / 'store.db'}"
    upgrade_head(store_url)
    tiny_store(store_url)
    config = load_config(PROJECT_ROOT / "configs" / "tiny.yaml")
    config.run.output_dir = str(root / "runs")
    target = MlflowTarget(f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts"))
    report = run_training(config, device="cpu", register=True, promote=True, progress=False,
                          target=target, log=lambda _: None, database_url=store_url)
    return report, target, store_url


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """The tiny model (`train_tiny`), trained once per test run."""
    root = tmp_path_factory.mktemp("tiny")
    report, target, store_url = train_tiny(root)
    return TinyModel(report, target, root, store_url)


@contextlib.contextmanager
def tiny_model_database(tiny_model: TinyModel, root: Path, label: str,
                        **settings: Any) -> Iterator[tuple[Settings, Any]]:
    """A scratch PostgreSQL database and a copy of the tiny model's registry of the caller's
    own (its alias moves must not touch other tests): (settings for an app, the registry)."""
    import shutil

    from training.registry import MlflowTarget

    shutil.copy(tiny_model.root / "mlflow.db", root / "mlflow.db")
    target = MlflowTarget(f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts"))
    with scratch_pg_database(label) as url:
        yield Settings(database_url=url, mlflow_tracking_uri=target.tracking_uri,
                       mlflow_artifact_root=str(root / "artifacts"), model_poll_seconds=0,
                       data_cache_dir=root / "cache", **settings), target


def tiny_users_data() -> tuple[Any, Any, Any]:
    """ml-100k, the tiny config's leave-one-out split (of the snapshot a store holding ml-100k
    gives), and the ratings of its users only."""
    from app.core.config import VAR_DIR
    from training.data import movielens
    from training.recommender import prepare_split

    tiny_users = 40  # configs/tiny.yaml recommender.max_users
    dataset = movielens.load(VAR_DIR / "cache")
    _, split = prepare_split(dataset.snapshot(), tiny_users)
    users = {seq.user_id for seq in split.train}
    subset = movielens.MovieLens(dataset.movies, [r for r in dataset.ratings if r.user_id in users],
                                 dataset.fingerprint)
    return dataset, split, subset
