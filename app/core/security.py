"""API keys with scopes. Keys are kept only as SHA-256 digests and compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

SCOPES = frozenset({"read", "write", "admin"})


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    digest: bytes
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_api_keys(spec: str) -> list[ApiKey]:
    """Parse `KEY:scope,scope;sha256=HEX:scope` entries. Plain keys are hashed at once.

    A digest form (`sha256=<hex>`) lets operators keep plaintext keys out of the environment.
    """
    keys = []
    for position, entry in enumerate(part.strip() for part in spec.split(";")):
        if not entry:
            continue
        secret, _, scope_text = entry.rpartition(":")
        scopes = frozenset(s.strip() for s in scope_text.split(",") if s.strip())
        if not secret or not scopes or not scopes <= SCOPES:
            raise ValueError(f"api_keys entry {position} must be KEY:scope[,scope] with scopes "
                             f"from {sorted(SCOPES)}")
        if secret.startswith("sha256="):
            digest = bytes.fromhex(secret.removeprefix("sha256="))
            if len(digest) != 32:
                raise ValueError(f"api_keys entry {position}: sha256 digest must be 64 hex digits")
        else:
            digest = hash_key(secret)
        keys.append(ApiKey(name=f"key{position}", digest=digest, scopes=scopes))
    return keys


def authenticate(keys: list[ApiKey], presented: str) -> ApiKey | None:
    """The key matching `presented`, checking every key so timing does not reveal which."""
    digest = hash_key(presented)
    match = None
    for key in keys:
        if hmac.compare_digest(key.digest, digest):
            match = key
    return match
