"""The one way models are loaded: alias -> registered version -> bundle directory -> bundle.

Serving, the drift scan (through serving's model manager), the benchmarks and the training
tests all come through :func:`load_registered` (:func:`load_version` when they start from an
alias), and :func:`registry_client` is the one place a registry client is made. Everything is
passed in explicitly: this package is shipped with each registered version (``code_paths``)
and imports nothing of the service (``app.core``, ``app.services``, ``app.store``); the
settings-based wrapper is ``app.services.models``.

The bundle directory is read with :meth:`InterestModelBundle.load` (its format and part-kind
checks) rather than by unpickling the pyfunc wrapper, so a version registered today keeps
loading after the code changes, and one this code cannot read is refused with a clear error.
:class:`InterestModelPyfunc` is what gets registered, so the version also loads on its own
with ``mlflow.pyfunc.load_model``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from pydantic import BaseModel

from app.ml.bundle import MANIFEST, InterestModelBundle
from app.ml.device import resolve_device

BUNDLE_ARTIFACT = "bundle"  # key of the bundle directory among the pyfunc model's artifacts

# MLflow's own defaults retry a failed registry call 7 times with exponential backoff and wait
# up to 120 s per attempt: about 4 minutes before an unreachable registry is reported (measured:
# 247 s on a refused connection). Serving holds the model manager's reload lock meanwhile (item
# upserts wait on it) and start-up waits for the first load, so serving gives up in seconds and
# tries again at the next poll. An operator's own MLFLOW_HTTP_REQUEST_* values win.
SERVING_REGISTRY_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def bound_registry_calls() -> None:
    """Make MLflow's HTTP calls of this process fail fast (see SERVING_REGISTRY_HTTP)."""
    for name, value in SERVING_REGISTRY_HTTP.items():
        os.environ.setdefault(name, value)


# What MLflow answers for a missing model (RESOURCE_DOES_NOT_EXIST) or alias
# (INVALID_PARAMETER_VALUE); anything else (INTERNAL_ERROR, TEMPORARILY_UNAVAILABLE, ...) means
# the registry itself did not answer properly.
ALIAS_NOT_FOUND_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})


class RegistryUnavailable(ConnectionError):
    """The MLflow registry did not answer (down, unreachable, or failing)."""


def registry_client(tracking_uri: str) -> MlflowClient:
    """A client of the MLflow store at ``tracking_uri`` (tracking and registry alike), never
    MLflow's process-wide URIs."""
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


@dataclass
class LoadedModel:
    bundle: InterestModelBundle
    name: str
    version: str
    alias: str
    run_id: str | None


def resolve_version(client: MlflowClient, name: str, alias: str) -> ModelVersion:
    """The version the alias points at; LookupError when the model or alias is missing,
    RegistryUnavailable when the registry cannot be asked."""
    bound_registry_calls()
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code in ALIAS_NOT_FOUND_CODES:
            raise LookupError(f"no version of {name!r} has alias {alias!r}: "
                              f"{error.message}") from error
        # Said as it is: "no version has the alias" would send an operator the wrong way.
        raise RegistryUnavailable(f"model registry unavailable: {error.message}") from error


def download_bundle(version: ModelVersion, tracking_uri: str, cache_dir: Path,
                    client: MlflowClient | None = None) -> Path:
    """Download a version's model files (once) and return its bundle directory. The cache
    key includes the version's source, so a recreated registry never serves a stale copy."""
    bound_registry_calls()
    source_key = hashlib.sha256(str(version.source).encode()).hexdigest()[:12]
    target = Path(cache_dir) / version.name / f"v{version.version}-{source_key}"
    if _model_dir(target) is None:
        # A folder of this process's own: workers starting together (serve --workers N,
        # replicas on one volume) each download beside the others, never into (or out from
        # under) another's copy; the first to finish moves its copy in place.
        partial = target.with_name(f"{target.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        partial.mkdir(parents=True)
        try:
            # Resolve the storage location with an explicit client: a models:/ URI would be
            # resolved against MLflow's process-wide registry URI, not this one.
            client = client or registry_client(tracking_uri)
            location = client.get_model_version_download_uri(version.name, str(version.version))
            mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(partial),
                                                tracking_uri=tracking_uri)
            if _model_dir(target) is None:
                shutil.rmtree(target, ignore_errors=True)  # a half copy of an older release
                try:
                    partial.rename(target)  # a crash mid-download never leaves a half bundle
                except OSError:  # another worker's copy got there first
                    if _model_dir(target) is None:
                        raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    model_dir = _model_dir(target)
    if model_dir is None:
        raise FileNotFoundError(f"version {version.version} of {version.name} has no MLmodel")
    return bundle_dir_of(model_dir)


def _model_dir(directory: Path) -> Path | None:
    """The folder holding MLmodel: ``directory`` itself or one level down (a downloaded
    folder keeps its own name under the destination)."""
    if (directory / "MLmodel").is_file():
        return directory
    found = sorted(directory.glob("*/MLmodel")) if directory.is_dir() else []
    return found[0].parent if found else None


def bundle_dir_of(model_dir: Path) -> Path:
    """The bundle directory inside a downloaded pyfunc model (from its MLmodel file)."""
    flavor = Model.load(str(model_dir / "MLmodel")).flavors.get("python_function", {})
    relative = flavor.get("artifacts", {}).get(BUNDLE_ARTIFACT, {}).get("path")
    if relative is None or not (model_dir / relative / MANIFEST).is_file():
        raise FileNotFoundError(f"{model_dir} holds no '{BUNDLE_ARTIFACT}' artifact")
    return model_dir / relative


def load_bundle(directory: Path, device: str = "auto") -> InterestModelBundle:
    """Read a bundle directory on the chosen device (``auto``: CUDA when available)."""
    return InterestModelBundle.load(directory, resolve_device(device))


BundleReader = Callable[[Path, str], InterestModelBundle]  # (bundle directory, device)


def load_registered(version: ModelVersion, tracking_uri: str, cache_dir: Path,
                    device: str = "auto", alias: str = "",
                    read: BundleReader = load_bundle) -> LoadedModel:
    """Download a resolved version (once) and read its bundle. Raises BundleError when the
    bundle's format, part kinds or files are not readable by this code."""
    bundle = read(download_bundle(version, tracking_uri, cache_dir), device)
    return LoadedModel(bundle, version.name, str(version.version), alias, version.run_id)


def load_version(tracking_uri: str, name: str, alias: str, cache_dir: Path,
                 device: str = "auto") -> LoadedModel:
    """Resolve ``name@alias`` and :func:`load_registered` it. Raises LookupError when no
    version has the alias, RegistryUnavailable when the registry does not answer."""
    version = resolve_version(registry_client(tracking_uri), name, alias)
    return load_registered(version, tracking_uri, cache_dir, device, alias)


class HistoryInput(BaseModel):
    """One user's events, oldest first: item ids and epoch-second timestamps; ``at``: the
    request time (epoch seconds; None: the last event's), read by a time-biased scorer."""

    item_ids: list[str]
    timestamps: list[float]
    at: float | None = None


class InterestModelPyfunc(mlflow.pyfunc.PythonModel):
    """Pyfunc face of a bundle (``mlflow.pyfunc.load_model(...).predict``): input a list of
    {"item_ids": [...], "timestamps": [...]}, output the top 10 item ids per history (params
    {"k": n} for another count). The type hints give MLflow the input schema to validate."""

    def load_context(self, context: Any) -> None:
        self.bundle = InterestModelBundle.load(context.artifacts[BUNDLE_ARTIFACT],
                                               resolve_device("auto"))

    def predict(self, context: Any, model_input: list[HistoryInput],
                params: dict[str, Any] | None = None) -> list[list[str]]:
        k = int((params or {}).get("k", 10))
        return [[item for item, _ in self.bundle.recommend(row.item_ids, row.timestamps, k,
                                                           at=row.at)]
                for row in model_input]
