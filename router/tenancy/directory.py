"""Tenants, their API keys and limits, read from the tenants file; reloaded when it changes.

Keys are looked up by SHA-256 digest, so the file may hold a key itself (`api_keys`, for local
use) or only its digest (`api_key_sha256`). Finding a tenant hashes the presented key and looks
the digest up in a dict. A key that shares a prefix with a real one has an unrelated digest, so
neither the hash-table lookup nor its final string comparison takes longer for a near miss: the
time does not depend on how much of a key matches. Keys are never logged or stored.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Generic, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from router.fairness.tiers import DEFAULT_TIER, TIER_NAMES, Tier, parse_tier
from router.tenancy.quota import Limits

logger = logging.getLogger("ray.serve")
T = TypeVar("T")
TENANT_NAME_CHARS = 128  # the ledger's tenant column


class TenantLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests_per_minute: int | None = Field(None, ge=0)
    tokens_per_minute: int | None = Field(None, ge=0)
    max_concurrent_requests: int | None = Field(None, ge=0)
    tokens_per_day: int | None = Field(None, ge=0)
    tokens_per_month: int | None = Field(None, ge=0)
    usd_per_day: Decimal | None = Field(None, ge=0)
    usd_per_month: Decimal | None = Field(None, ge=0)

    def as_limits(self) -> Limits:
        return Limits(**self.model_dump())


class TenantSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    api_keys: list[str] = Field(default_factory=list)  # plain keys: for local use
    api_key_sha256: list[str] = Field(default_factory=list)
    tier: str | None = None  # price tier; None: the prices file's default tier
    # Priority tier (router/fairness/tiers.py): interactive, standard or batch; a request may ask
    # for a lower one, never a higher one.
    priority: str = DEFAULT_TIER.label
    admin: bool = False  # sees every tenant's usage
    allowed_pools: list[str] | None = None  # None: every pool
    limits: TenantLimits = Field(default_factory=TenantLimits)

    @field_validator("limits", mode="before")
    @classmethod
    def _no_limits(cls, v):
        return {} if v is None else v  # `limits:` with every line commented out

    @field_validator("priority")
    @classmethod
    def _known_priority(cls, v: str) -> str:
        try:
            return parse_tier(v).label
        except ValueError:
            raise ValueError(f"priority is one of {', '.join(TIER_NAMES)}") from None

    @field_validator("api_key_sha256")
    @classmethod
    def _hex_digests(cls, v: list[str]) -> list[str]:
        out = [d.strip().lower() for d in v]
        for d in out:
            if len(d) != 64 or any(c not in "0123456789abcdef" for c in d):
                raise ValueError("api_key_sha256 entries are 64 hex characters")
        return out


class TenantsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenants: dict[str, TenantSpec] = Field(default_factory=dict)

    @field_validator("tenants", mode="before")
    @classmethod
    def _no_tenants(cls, v):
        return {} if v is None else v

    @field_validator("tenants")
    @classmethod
    def _names(cls, v: dict[str, TenantSpec]) -> dict[str, TenantSpec]:
        for name in v:
            if not 1 <= len(name) <= TENANT_NAME_CHARS:
                raise ValueError(f"tenant names are 1 to {TENANT_NAME_CHARS} characters: {name[:40]!r}")
        return v


@dataclass(frozen=True)
class Tenant:
    name: str
    tier: str | None = None
    admin: bool = False
    allowed_pools: frozenset[str] | None = None
    limits: Limits = Limits()
    priority: Tier = DEFAULT_TIER

    def may_use(self, pool: str) -> bool:
        return self.allowed_pools is None or pool in self.allowed_pools


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class TenantDirectory:
    def __init__(self, tenants: dict[str, TenantSpec]):
        self.tenants: dict[str, Tenant] = {}
        self._by_digest: dict[str, Tenant] = {}
        for name, spec in tenants.items():
            tenant = Tenant(name, spec.tier, spec.admin,
                            None if spec.allowed_pools is None else frozenset(spec.allowed_pools),
                            spec.limits.as_limits(), parse_tier(spec.priority))
            self.tenants[name] = tenant
            for digest in {key_digest(k) for k in spec.api_keys} | set(spec.api_key_sha256):
                if digest in self._by_digest:
                    raise ValueError(f"an API key is given to two tenants: {self._by_digest[digest].name}, {name}")
                self._by_digest[digest] = tenant

    @classmethod
    def from_dict(cls, data: dict | None) -> "TenantDirectory":
        return cls(TenantsFile.model_validate(data or {}).tenants)

    @classmethod
    def from_file(cls, path: str) -> "TenantDirectory":
        return cls.from_dict(read_yaml(path))

    def authenticate(self, key: str | None) -> Tenant | None:
        if not key:
            return None
        return self._by_digest.get(key_digest(key))


def read_yaml(path: str) -> dict:
    if not os.path.exists(path):
        raise FileNotFoundError(f"file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            return yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from exc


class ReloadingFile(Generic[T]):
    """A parsed file that follows its changes: at most every `interval_s`, the file's stat is
    compared with the last one read and the file is parsed again when it differs. A change is
    therefore in force within `interval_s` of being written (atomic rename or in-place). A file
    that no longer parses keeps the last good version in force, with an error in the log."""

    def __init__(self, path: str, parse: Callable[[dict], T], interval_s: float = 2.0):
        self.path, self._parse, self._interval = path, parse, interval_s
        self._signature = self._stat()
        self._value = parse(read_yaml(path))  # a bad file at start-up fails the deploy
        self._checked = time.monotonic()

    def _stat(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def get(self) -> T:
        now = time.monotonic()
        if now - self._checked >= self._interval:
            self._checked = now
            signature = self._stat()
            # An empty file is one being rewritten in place: keep the version in force until it is whole.
            if signature is not None and signature != self._signature and signature[1] > 0:
                self._signature = signature
                try:
                    self._value = self._parse(read_yaml(self.path))
                    logger.info("reloaded %s", self.path)
                except (ValueError, ValidationError, OSError) as exc:
                    logger.error("%s changed but cannot be used (keeping the previous version): %s", self.path, exc)
        return self._value
