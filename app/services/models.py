"""The service settings' side of model loading: which registry, model, alias, cache, device.

``app.ml.loader`` takes all of these as arguments (it ships with every registered version and
must not import the service); callers that start from the settings come through here.
"""

from __future__ import annotations

from mlflow.entities.model_registry import ModelVersion

from app.core.config import Settings, get_settings
from app.ml.loader import LoadedModel, load_version, registry_client, resolve_version


def load_champion(settings: Settings | None = None, device: str | None = None) -> LoadedModel:
    """The version the settings' alias points at, loaded (``device`` overrides the settings)."""
    settings = settings or get_settings()
    return load_version(settings.mlflow_tracking_uri, settings.model_name, settings.model_alias,
                        settings.model_download_dir, device or settings.device)


def champion_version(settings: Settings | None = None) -> ModelVersion:
    """The registered version (tags included) the settings' alias points at, not loaded."""
    settings = settings or get_settings()
    return resolve_version(registry_client(settings.mlflow_tracking_uri), settings.model_name,
                           settings.model_alias)
