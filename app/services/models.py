"""The service settings' side of model loading: which registry, model, alias, cache, device.

``app.ml.loader`` takes all of these as arguments (it ships with every registered version and
must not import the service); callers that start from the settings come through here.
"""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from app.core.config import Settings, get_settings
from app.ml.loader import (
    ALIAS_NOT_FOUND_CODES,
    LoadedModel,
    RegistryUnavailable,
    bound_registry_calls,
    load_version,
    registry_client,
    resolve_version,
)


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


def move_alias(client: MlflowClient, name: str, alias: str, version: str,
               remove: str | None = None) -> None:
    """Point `alias` at `version` of `name`, then delete the alias `remove` (if given and
    set). RegistryUnavailable when the registry does not answer."""
    bound_registry_calls()
    try:
        client.set_registered_model_alias(name, alias, version)
        if remove is not None:
            try:
                client.delete_registered_model_alias(name, remove)
            except MlflowException as error:
                if error.error_code not in ALIAS_NOT_FOUND_CODES:
                    raise
    except MlflowException as error:
        raise RegistryUnavailable(f"model registry unavailable: {error.message}") from error
