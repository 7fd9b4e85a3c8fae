"""The registry of part kinds: ``(role, kind)`` -> the class that saves and loads such parts.

RecBole builds a model from its name (``get_model(name)``); a bundle builds each of its parts
from the ``kind`` its manifest names. A kind is a class decorated with :func:`register_part`::

    @register_part("drift", "surprise-zscore", part_format=1)
    class SurpriseZScore(nn.Module):
        def traces(self, scorer, item_idx, timestamps) -> DriftTrace: ...
        def save_part(self, directory: Path) -> dict[str, Any]: ...   # files + JSON config
        @classmethod
        def load_part(cls, directory, config, part_format, device) -> SurpriseZScore: ...

Each part's manifest entry is ``{"kind", "format", "files", "config"}``: ``format`` is the
kind's own format number (bump it when the kind's files or config change, and keep reading
the old numbers in ``reads``), independent of the bundle's ``MODEL_FORMAT`` and of the other
parts. Kinds shipped with the project are imported on first use (``BUILTIN_MODULES``); a kind
defined elsewhere registers itself when its module is imported.
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch

Role = Literal["encoder", "scorer", "drift"]
ROLES: tuple[Role, ...] = ("encoder", "scorer", "drift")
# What each role's parts must have (app.ml.parts.protocols), checked at registration.
ROLE_METHODS: dict[str, tuple[str, ...]] = {
    "encoder": ("embed", "dim"),
    "scorer": ("last_hidden", "item_logits", "item_table", "set_item_text_embeddings",
               "max_len"),
    "drift": ("traces",),
}
# Modules holding the kinds this project ships (imported when a kind is first looked up).
BUILTIN_MODULES = ("app.ml.encoder", "app.ml.sequence", "app.ml.drift_head",
                   "app.ml.drift_shift", "app.ml.drift_bocpd")
# The kinds a format-1 bundle (written before parts had kinds) is made of.
DEFAULT_KINDS: dict[Role, str] = {"encoder": "minilm", "scorer": "sasrec-text-time",
                                  "drift": "feature-gru"}


class BundleError(RuntimeError):
    """A bundle directory cannot be read: unknown format or kind, missing/inconsistent files."""


@dataclass(frozen=True)
class PartKind:
    role: Role
    kind: str
    part_format: int  # the format this code writes
    reads: frozenset[int]  # the formats this code reads
    cls: type

    def entry(self, config: dict[str, Any], files: Iterable[str]) -> dict[str, Any]:
        return {"kind": self.kind, "format": self.part_format, "files": sorted(files),
                "config": config}


_KINDS: dict[tuple[str, str], PartKind] = {}
T = TypeVar("T", bound=type)


def register_part(role: Role, kind: str, part_format: int = 1,
                  reads: Iterable[int] | None = None) -> Callable[[T], T]:
    """Class decorator: parts of class ``cls`` are saved and loaded as ``role``/``kind``."""
    if role not in ROLES:
        raise ValueError(f"unknown part role {role!r}; expected one of {ROLES}")

    def decorate(cls: T) -> T:
        needed = ("save_part", "load_part", "eval", "to", *ROLE_METHODS[role])
        missing = [name for name in needed if not hasattr(cls, name)]
        if missing:
            raise TypeError(f"{cls.__name__} cannot be a {role} part: it lacks {missing}")
        known = _KINDS.get((role, kind))
        if known is not None and known.cls.__qualname__ != cls.__qualname__:
            raise ValueError(f"{role} kind {kind!r} is already {known.cls.__qualname__}")
        readable = frozenset(reads if reads is not None else ()) | {part_format}
        _KINDS[(role, kind)] = PartKind(role, kind, part_format, readable, cls)
        return cls

    return decorate


def _import_builtins() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def registered_kinds(role: Role) -> list[str]:
    _import_builtins()
    return sorted(kind for r, kind in _KINDS if r == role)


def get_kind(role: Role, kind: str) -> PartKind:
    """The registered kind; BundleError naming the known ones when there is none."""
    _import_builtins()
    found = _KINDS.get((role, kind))
    if found is None:
        raise BundleError(f"no {role} part of kind {kind!r} is registered in this code "
                          f"(known: {', '.join(registered_kinds(role)) or 'none'})")
    return found


def kind_of(role: Role, part: object) -> PartKind:
    """The kind a part object is saved as: its class's (or nearest registered base's)."""
    _import_builtins()
    for cls in type(part).__mro__:
        for (r, _), spec in _KINDS.items():
            if r == role and spec.cls is cls:
                return spec
    raise BundleError(f"{type(part).__name__} is not a registered {role} part kind")


def save_part(role: Role, part: Any, directory: Path,
              reserved: Iterable[str] = ()) -> dict[str, Any]:
    """Save ``part`` into the bundle ``directory``; its manifest entry.

    The part writes into a staging folder whose contents are then moved up, so two parts can
    never overwrite each other's files, nor the bundle's own (``reserved``): a clash is
    refused."""
    spec = kind_of(role, part)
    staging = directory / f".staging-{role}"
    staging.mkdir()
    try:
        config = part.save_part(staging)
        files = sorted(p.name for p in staging.iterdir())
        taken = set(reserved)
        clash = [name for name in files if name in taken or (directory / name).exists()]
        if clash:
            raise BundleError(f"{role} part {spec.kind!r} writes {clash}, already in the bundle")
        for name in files:
            (staging / name).rename(directory / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return spec.entry(config, files)


def load_part(role: Role, entry: dict[str, Any], directory: Path, device: torch.device) -> Any:
    """Build the part a manifest entry describes from the bundle ``directory``."""
    if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str):
        raise BundleError(f"the manifest's {role} part has no kind: {entry!r}")
    spec = get_kind(role, entry["kind"])
    found = entry.get("format")
    if type(found) is not int or found not in spec.reads:
        raise BundleError(f"the {role} part of kind {spec.kind!r} has format {found!r}; this "
                          f"code reads format {', '.join(map(str, sorted(spec.reads)))}")
    return spec.cls.load_part(directory, entry.get("config") or {}, found, device)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a part's file; never runs code (``weights_only``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt or truncated: UnpicklingError, RuntimeError, EOFError
        first_line = (str(error).splitlines() or [""])[0][:200]
        raise BundleError(f"{path.name} is not a readable weights file "
                          f"({type(error).__name__}: {first_line})") from error
