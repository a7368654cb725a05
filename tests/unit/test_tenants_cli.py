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


def test_a_new_file_is_readable_by_the_router_and_a_symlink_stays_a_symlink(tmp_path, capsys):
    real = tmp_path / "real" / "tenants.yaml"
    real.parent.mkdir()
    real.write_text("tenants: {}\n")
    link = tmp_path / "tenants.yaml"
    link.symlink_to(real)
    assert main(["--file", str(link), "add", "acme"]) == 0
    assert link.is_symlink() and "acme" in real.read_text()
    fresh = tmp_path / "new" / "tenants.yaml"
    assert main(["--file", str(fresh), "add", "acme"]) == 0
    assert fresh.stat().st_mode & 0o777 == 0o644


def test_usage_of_a_missing_sqlite_ledger_is_an_error_not_an_empty_report(tmp_path, capsys):
    assert main(["usage", "--ledger", f"sqlite:///{tmp_path / 'typo.db'}"]) == 2
    assert "no ledger" in capsys.readouterr().err
    assert not (tmp_path / "typo.db").exists()
