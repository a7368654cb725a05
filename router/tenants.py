"""Tenants and their API keys. The seam where quotas, budgets and prices attach later.

Keys are compared by SHA-256 digest so the file may hold either the key (`api_keys`) or only its
digest (`api_key_sha256`), and lookups do not depend on key length or content.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import yaml


@dataclass(frozen=True)
class Tenant:
    name: str


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class TenantDirectory:
    def __init__(self, tenants: dict[str, list[str]]):
        """tenants: name -> SHA-256 digests of its keys."""
        self.digests_by_tenant = {name: list(d) for name, d in tenants.items()}
        self._by_digest: dict[str, Tenant] = {}
        for name, digests in tenants.items():
            for digest in digests:
                if digest in self._by_digest:
                    raise ValueError(f"an API key is given to two tenants: {self._by_digest[digest].name}, {name}")
                self._by_digest[digest] = Tenant(name)

    @classmethod
    def from_file(cls, path: str) -> "TenantDirectory":
        if not os.path.exists(path):
            raise FileNotFoundError(f"tenants file not found: {path}")
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        tenants: dict[str, list[str]] = {}
        for name, spec in (data.get("tenants") or {}).items():
            spec = spec or {}
            digests = [key_digest(k) for k in spec.get("api_keys", [])]
            digests += [d.lower() for d in spec.get("api_key_sha256", [])]
            tenants[str(name)] = digests
        return cls(tenants)

    def authenticate(self, key: str | None) -> Tenant | None:
        if not key:
            return None
        return self._by_digest.get(key_digest(key))
