"""router/tenancy/directory.py: the tenants file (keys, digests, limits) and its hot reload."""

import hashlib
import logging
import os
import time
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from router.tenancy import directory
from router.tenancy.directory import ReloadingFile, Tenant, TenantDirectory, key_digest, read_yaml
from router.tenancy.pricing import PriceTable
from router.tenancy.quota import Limits


REPO = Path(__file__).resolve().parents[2]


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# ---- TenantDirectory ---------------------------------------------------------------------------

def test_plain_keys_and_digests_authenticate():
    d = TenantDirectory.from_dict({"tenants": {
        "alice": {"api_keys": ["sk-alice-1", "sk-alice-2"]},
        "bob": {"api_key_sha256": [sha256("sk-bob")]},
    }})
    assert d.authenticate("sk-alice-1").name == "alice"
    assert d.authenticate("sk-alice-2").name == "alice"
    assert d.authenticate("sk-bob").name == "bob"
    assert d.authenticate(sha256("sk-bob")) is None  # the digest itself is not a key
    assert sorted(d.tenants) == ["alice", "bob"]


def test_unknown_missing_and_near_miss_keys_are_refused():
    d = TenantDirectory.from_dict({"tenants": {"alice": {"api_keys": ["sk-alice"]}}})
    for key in (None, "", "sk-alic", "sk-alice ", "SK-ALICE", "sk-alice-2", "sk-bob"):
        assert d.authenticate(key) is None, key


def test_key_digest_is_sha256_of_utf8():
    assert key_digest("sk-é") == hashlib.sha256("sk-é".encode("utf-8")).hexdigest()
    d = TenantDirectory.from_dict({"tenants": {"u": {"api_key_sha256": [sha256("sk-é")]}}})
    assert d.authenticate("sk-é").name == "u"


def test_digests_are_normalised_to_lower_case_without_spaces():
    digest = sha256("sk-upper")
    d = TenantDirectory.from_dict({"tenants": {"t": {"api_key_sha256": [f"  {digest.upper()} \n"]}}})
    assert d.authenticate("sk-upper").name == "t"


@pytest.mark.parametrize("tenants", [
    {"a": {"api_keys": ["sk-shared"]}, "b": {"api_keys": ["sk-shared"]}},
    {"a": {"api_keys": ["sk-shared"]}, "b": {"api_key_sha256": [sha256("sk-shared")]}},
    {"a": {"api_key_sha256": [sha256("sk-shared")]}, "b": {"api_key_sha256": [sha256("sk-shared").upper()]}},
])
def test_a_key_given_to_two_tenants_is_refused(tenants):
    with pytest.raises(ValueError, match="two tenants") as info:
        TenantDirectory.from_dict({"tenants": tenants})
    assert "a" in str(info.value) and "b" in str(info.value)
    assert "sk-shared" not in str(info.value)  # the key is never echoed


@pytest.mark.parametrize("digest", [
    sha256("x")[:-1],  # 63 characters
    sha256("x") + "0",  # 65
    "g" * 64,  # not hex
    "sk-this-is-a-plain-key-not-a-digest",
    "",
])
def test_bad_digests_are_refused(digest):
    with pytest.raises(ValidationError, match="64 hex"):
        TenantDirectory.from_dict({"tenants": {"t": {"api_key_sha256": [digest]}}})


@pytest.mark.parametrize("data", [
    {"tenants": {"t": {}}, "version": 2},
    {"tenants": {"t": {"api_key": ["sk-typo"]}}},
    {"tenants": {"t": {"limits": {"rpm": 5}}}},
    {"tenants": {"t": {"limits": {"requests_per_minute": -1}}}},
    {"tenants": {"t": {"limits": {"usd_per_day": "-0.01"}}}},
    {"tenants": {"t": {"limits": {"tokens_per_day": "lots"}}}},
    {"tenants": {"t": {"api_keys": "sk-not-a-list"}}},
    {"tenants": {"t": None}},
    {"tenants": ["t"]},
])
def test_malformed_tenants_are_refused(data):
    with pytest.raises(ValidationError):
        TenantDirectory.from_dict(data)


def test_tenant_fields_and_limits():
    d = TenantDirectory.from_dict({"tenants": {
        "full": {"api_keys": ["k1"], "tier": "enterprise", "admin": True, "allowed_pools": ["short"],
                 "limits": {"requests_per_minute": 5, "tokens_per_minute": 1000, "max_concurrent_requests": 2,
                            "tokens_per_day": 2000, "tokens_per_month": 50000,
                            "usd_per_day": "1.25", "usd_per_month": 30}},
        "bare": {"api_keys": ["k2"]},
    }})
    full = d.authenticate("k1")
    assert (full.name, full.tier, full.admin, full.allowed_pools) == ("full", "enterprise", True, frozenset({"short"}))
    assert full.limits == Limits(requests_per_minute=5, tokens_per_minute=1000, max_concurrent_requests=2,
                                 tokens_per_day=2000, tokens_per_month=50000,
                                 usd_per_day=Decimal("1.25"), usd_per_month=Decimal(30))
    assert isinstance(full.limits.usd_per_day, Decimal)
    bare = d.authenticate("k2")
    assert (bare.tier, bare.admin, bare.allowed_pools, bare.limits) == (None, False, None, Limits())
    assert not bare.limits.bounds_tokens


def test_limits_with_every_field_null_mean_no_limit():
    d = TenantDirectory.from_dict({"tenants": {"t": {"api_keys": ["k"], "limits": {
        "requests_per_minute": None, "usd_per_day": None}}}})
    assert d.authenticate("k").limits == Limits()


def test_null_limits_mean_no_limit():
    text = "tenants:\n  t:\n    api_keys: [k]\n    limits:\n      # requests_per_minute: 5\n"
    data = yaml.safe_load(text)
    assert data["tenants"]["t"]["limits"] is None
    d = TenantDirectory.from_dict(data)
    assert d.authenticate("k").limits == Limits()


def test_tenant_without_keys_is_listed_but_cannot_authenticate():
    d = TenantDirectory.from_dict({"tenants": {"ghost": {}}})
    assert d.tenants["ghost"] == Tenant("ghost")
    assert d.authenticate("anything") is None


def test_may_use():
    assert Tenant("any").may_use("short") and Tenant("any").may_use("long")
    some = Tenant("some", allowed_pools=frozenset({"short"}))
    assert some.may_use("short") and not some.may_use("long")
    none = Tenant("none", allowed_pools=frozenset())
    assert not none.may_use("short")


def test_empty_directory():
    for data in (None, {}, {"tenants": {}}):
        d = TenantDirectory.from_dict(data)
        assert d.tenants == {} and d.authenticate("sk-anything") is None


def test_from_file_and_read_yaml(tmp_path):
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants:\n  t:\n    api_keys: [sk-file]\n")
    assert TenantDirectory.from_file(str(path)).authenticate("sk-file").name == "t"
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    assert read_yaml(str(empty)) == {}
    broken = tmp_path / "broken.yaml"
    broken.write_text("tenants: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        read_yaml(str(broken))
    with pytest.raises(FileNotFoundError):
        read_yaml(str(tmp_path / "absent.yaml"))


def test_shipped_tenants_file_parses():
    d = TenantDirectory.from_file(str(REPO / "configs" / "tenants.yaml"))
    limited = d.authenticate("sk-local-limited")
    assert limited is not None and limited.limits.requests_per_minute == 5
    assert limited.limits.tokens_per_day == 2000


# ---- ReloadingFile ---------------------------------------------------------------------------

STEP = 2 ** -7  # a tiny reload interval (~8 ms), exact in binary


class Clock:
    """Stands in for the time module inside directory.py: the reload interval without sleeping.
    Times are multiples of 1/1024 s so that the interval arithmetic is exact in binary floats."""

    def __init__(self):
        self.t = 1_000.0

    def monotonic(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(directory, "time", c)
    return c


class Tenants:
    """A tenants file on disk whose every write gets a distinct mtime (so the stat always changes)."""

    def __init__(self, path):
        self.path, self.version = str(path), 0

    def write(self, data, *, atomic: bool = False) -> None:
        text = data if isinstance(data, str) else yaml.safe_dump(data)
        self.version += 1
        target = self.path + ".tmp" if atomic else self.path
        with open(target, "w", encoding="utf-8") as f:
            f.write(text)
        mtime = 1_700_000_000_000_000_000 + self.version * 1_000_000_000
        os.utime(target, ns=(mtime, mtime))
        if atomic:
            os.replace(target, self.path)


def spec(**tenants) -> dict:
    return {"tenants": tenants}


@pytest.fixture
def tenants_file(tmp_path) -> Tenants:
    f = Tenants(tmp_path / "tenants.yaml")
    f.write(spec(alice={"api_keys": ["sk-alice"], "limits": {"requests_per_minute": 5}}))
    return f


def test_bad_file_at_start_up_fails(tmp_path):
    f = Tenants(tmp_path / "tenants.yaml")
    f.write(spec(a={"api_keys": ["k"]}, b={"api_keys": ["k"]}))
    with pytest.raises(ValueError):
        ReloadingFile(f.path, TenantDirectory.from_dict)
    with pytest.raises(FileNotFoundError):
        ReloadingFile(str(tmp_path / "absent.yaml"), TenantDirectory.from_dict)


def test_a_change_is_not_read_before_the_interval(tenants_file, clock):
    r = ReloadingFile(tenants_file.path, TenantDirectory.from_dict, interval_s=2.0)
    tenants_file.write(spec(bob={"api_keys": ["sk-bob"]}))
    clock.advance(1.75)
    assert r.get().authenticate("sk-alice").name == "alice"
    assert r.get().authenticate("sk-bob") is None
    clock.advance(0.25)
    assert r.get().authenticate("sk-bob").name == "bob"
    assert r.get().authenticate("sk-alice") is None


def test_an_unchanged_file_is_not_parsed_again(tenants_file, clock):
    calls = []

    def parse(data):
        calls.append(data)
        return TenantDirectory.from_dict(data)

    r = ReloadingFile(tenants_file.path, parse, interval_s=STEP)
    first = r.get()
    for _ in range(5):
        clock.advance(1)
        assert r.get() is first
    assert len(calls) == 1
    tenants_file.write(spec(alice={"api_keys": ["sk-alice"]}))
    clock.advance(1)
    assert r.get() is not first
    assert len(calls) == 2


def test_new_key_rotated_key_and_changed_limit_take_effect(tenants_file, clock):
    r = ReloadingFile(tenants_file.path, TenantDirectory.from_dict, interval_s=STEP)
    assert r.get().authenticate("sk-alice").limits.requests_per_minute == 5

    # a new tenant
    tenants_file.write(spec(alice={"api_keys": ["sk-alice"], "limits": {"requests_per_minute": 5}},
                            bob={"api_key_sha256": [sha256("sk-bob")]}))
    clock.advance(STEP)
    assert r.get().authenticate("sk-bob").name == "bob"
    assert r.get().authenticate("sk-alice").name == "alice"

    # alice's key rotated: the old one stops working at once, the new one works
    tenants_file.write(spec(alice={"api_key_sha256": [sha256("sk-alice-2")], "limits": {"requests_per_minute": 5}},
                            bob={"api_key_sha256": [sha256("sk-bob")]}))
    clock.advance(STEP)
    assert r.get().authenticate("sk-alice") is None
    assert r.get().authenticate("sk-alice-2").name == "alice"

    # a changed limit, same keys
    tenants_file.write(spec(alice={"api_key_sha256": [sha256("sk-alice-2")],
                                   "limits": {"requests_per_minute": 50, "usd_per_day": "2.5"}},
                            bob={"api_key_sha256": [sha256("sk-bob")]}))
    clock.advance(STEP)
    limits = r.get().authenticate("sk-alice-2").limits
    assert (limits.requests_per_minute, limits.usd_per_day) == (50, Decimal("2.5"))


@pytest.mark.parametrize("broken", [
    "tenants: [unclosed\n",  # not YAML
    yaml.safe_dump(spec(a={"api_keys": ["k"]}, b={"api_keys": ["k"]})),  # one key, two tenants
    yaml.safe_dump(spec(alice={"api_keys": ["sk-alice"], "limits": {"rpm": 1}})),  # unknown field
    yaml.safe_dump(spec(alice={"api_key_sha256": ["deadbeef"]})),  # bad digest
    "- just\n- a list\n",
])
def test_a_broken_edit_keeps_the_previous_version(tenants_file, clock, caplog, broken):
    r = ReloadingFile(tenants_file.path, TenantDirectory.from_dict, interval_s=STEP)
    good = r.get()
    tenants_file.write(broken)
    clock.advance(STEP)
    with caplog.at_level(logging.ERROR, logger="ray.serve"):
        assert r.get() is good
    assert r.get().authenticate("sk-alice").limits.requests_per_minute == 5
    assert any("keeping the previous version" in rec.getMessage() for rec in caplog.records)
    assert not any("sk-alice" in rec.getMessage() for rec in caplog.records)  # keys are never logged
    clock.advance(10)
    assert r.get() is good  # still in force, and not retried while unchanged
    # the fix is picked up
    tenants_file.write(spec(alice={"api_keys": ["sk-alice"], "limits": {"requests_per_minute": 9}}))
    clock.advance(STEP)
    assert r.get().authenticate("sk-alice").limits.requests_per_minute == 9


def test_a_deleted_file_keeps_the_last_version_and_a_recreated_one_is_read(tenants_file, clock):
    r = ReloadingFile(tenants_file.path, TenantDirectory.from_dict, interval_s=STEP)
    good = r.get()
    os.remove(tenants_file.path)
    clock.advance(1)
    assert r.get() is good
    tenants_file.write(spec(carol={"api_keys": ["sk-carol"]}))
    clock.advance(1)
    assert r.get().authenticate("sk-carol").name == "carol"


def test_atomic_rename_is_picked_up(tenants_file, clock):
    r = ReloadingFile(tenants_file.path, TenantDirectory.from_dict, interval_s=STEP)
    tenants_file.write(spec(dave={"api_keys": ["sk-dave"]}), atomic=True)
    clock.advance(STEP)
    assert r.get().authenticate("sk-dave").name == "dave"


def test_same_size_rewrite_is_picked_up_by_its_mtime(tmp_path, clock):
    path = tmp_path / "t.yaml"
    path.write_text("tenants: {t: {api_keys: [sk-aaaa]}}\n")
    os.utime(path, ns=(10**18, 10**18))
    r = ReloadingFile(str(path), TenantDirectory.from_dict, interval_s=STEP)
    path.write_text("tenants: {t: {api_keys: [sk-bbbb]}}\n")  # same length
    os.utime(path, ns=(10**18 + 1, 10**18 + 1))
    clock.advance(STEP)
    assert r.get().authenticate("sk-bbbb").name == "t"
    assert r.get().authenticate("sk-aaaa") is None


def test_touch_alone_reparses_to_an_equal_value(tenants_file, clock):
    r = ReloadingFile(tenants_file.path, TenantDirectory.from_dict, interval_s=STEP)
    first = r.get()
    os.utime(tenants_file.path, ns=(1, 1))
    clock.advance(STEP)
    assert r.get() is not first
    assert r.get().authenticate("sk-alice") == first.authenticate("sk-alice")


def test_reload_with_the_real_clock(tenants_file):
    r = ReloadingFile(tenants_file.path, TenantDirectory.from_dict, interval_s=0.01)
    assert r.get().authenticate("sk-erin") is None
    tenants_file.write(spec(erin={"api_keys": ["sk-erin"]}))
    deadline = time.monotonic() + 2.0
    while r.get().authenticate("sk-erin") is None:
        assert time.monotonic() < deadline, "change not picked up"
        time.sleep(0.005)
    assert r.get().authenticate("sk-alice") is None


def test_reloading_price_file(tmp_path, clock):
    f = Tenants(tmp_path / "prices.yaml")
    f.write({"tiers": {"standard": {"short": {"input": "0.5", "output": "1.5"}}}})
    r = ReloadingFile(f.path, PriceTable.from_dict, interval_s=STEP)
    assert r.get().prices(None, "short").output == Decimal("1.5")
    f.write({"tiers": {"standard": {"short": {"input": "0.5", "output": "0.0000001"}}}})  # 7 places
    clock.advance(STEP)
    assert r.get().prices(None, "short").output == Decimal("1.5")
    f.write({"tiers": {"standard": {"short": {"input": "0.5", "output": "2"}}}})
    clock.advance(STEP)
    assert r.get().prices(None, "short").output == Decimal("2")
