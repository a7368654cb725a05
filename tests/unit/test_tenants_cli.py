"""magistral-tenants: add, rotate-key, list and usage on a real tenants file and ledger."""

import re
import shutil
from decimal import Decimal

from router.tenancy.cli import main
from router.tenancy.directory import TenantDirectory
from router.tenancy.store import COMPLETED, Outcome, QuotaStore, RequestInfo


def printed_key(out: str) -> str:
    (key,) = re.findall(r"\bsk-[A-Za-z0-9_-]{20,}", out)
    return key


def test_add_prints_the_key_once_and_stores_only_its_digest(tmp_path, capsys):
    path = tmp_path / "tenants.yaml"
    shutil.copy("configs/tenants.yaml", path)
    assert main(["--file", str(path), "add", "acme", "--rpm", "600", "--usd-per-month", "200.5",
                 "--pools", "short,long", "--tier", "enterprise"]) == 0
    key = printed_key(capsys.readouterr().out)
    text = path.read_text()
    assert key not in text
    assert text.startswith("# Tenants, their API keys and limits.")  # comments kept
    tenant = TenantDirectory.from_file(str(path)).authenticate(key)
    assert tenant.name == "acme" and tenant.tier == "enterprise"
    assert tenant.allowed_pools == frozenset({"short", "long"})
    assert tenant.limits.requests_per_minute == 600 and tenant.limits.usd_per_month == Decimal("200.5")
    assert TenantDirectory.from_file(str(path)).authenticate("sk-local-demo").name == "demo"  # others intact
    assert main(["--file", str(path), "add", "acme"]) == 2  # no silent overwrite


def test_rotate_key_replaces_or_keeps_the_old_key(tmp_path, capsys):
    path = tmp_path / "tenants.yaml"
    assert main(["--file", str(path), "add", "acme"]) == 0
    first = printed_key(capsys.readouterr().out)
    assert main(["--file", str(path), "rotate-key", "acme", "--keep-old"]) == 0
    second = printed_key(capsys.readouterr().out)
    directory = TenantDirectory.from_file(str(path))
    assert directory.authenticate(first).name == directory.authenticate(second).name == "acme"
    assert main(["--file", str(path), "rotate-key", "acme"]) == 0
    third = printed_key(capsys.readouterr().out)
    directory = TenantDirectory.from_file(str(path))
    assert directory.authenticate(first) is None and directory.authenticate(second) is None
    assert directory.authenticate(third).name == "acme"
    assert main(["--file", str(path), "rotate-key", "nobody"]) == 2


def test_list_never_shows_keys(tmp_path, capsys):
    assert main(["--file", "configs/tenants.yaml", "list"]) == 0
    out = capsys.readouterr().out
    assert "limited" in out and "requests_per_minute=5" in out and "tokens_per_day=2000" in out
    assert "sk-local" not in out


def test_usage_reads_the_ledger(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    store = QuotaStore(url)
    store.settle(RequestInfo("r1", "acme", pool="short"), Outcome(COMPLETED, 100, 20, 5, Decimal("0.00008")))
    store.close()
    assert main(["usage", "--ledger", url, "--tenant", "acme"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("acme"))
    assert line.split() == ["acme", "completed", "1", "100", "20", "5", "0.00008"]
    assert main(["usage", "--ledger", url, "--from", "not-a-date"]) == 2
