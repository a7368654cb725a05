"""magistral-tenants (or python -m router.tenancy): manage tenants and read their usage.

    magistral-tenants add acme --rpm 600 --tokens-per-day 5000000 --usd-per-month 200
    magistral-tenants list
    magistral-tenants rotate-key acme [--keep-old]
    magistral-tenants usage [--tenant acme] [--from 2026-11-01] [--to 2026-12-01]

The tenants file is $TENANTS_FILE, else configs/tenants.yaml (or --file). New keys are printed
once and stored only as SHA-256 digests. Edits keep the file's comments and are written
atomically (a replacement file renamed over the old one), so a router reloading it never reads
half a file; every ingress replica picks the change up within `tenants_reload_s`.
"""

from __future__ import annotations

import argparse
import fcntl
import io
import os
import secrets
import sys
import tempfile
from contextlib import contextmanager
from decimal import Decimal

from pydantic import ValidationError
from ruamel.yaml import YAML

from router.tenancy.directory import TenantsFile, key_digest, read_yaml
from router.tenancy.errors import TenancyError
from router.tenancy.pricing import usd_text
from router.tenancy.usage_report import parse_time

DEFAULT_FILE = "configs/tenants.yaml"
DEFAULT_LEDGER = "sqlite:///.run/ledger.db"
LIMIT_FLAGS = {  # flag -> limits field
    "rpm": "requests_per_minute", "tpm": "tokens_per_minute", "concurrency": "max_concurrent_requests",
    "tokens_per_day": "tokens_per_day", "tokens_per_month": "tokens_per_month",
    "usd_per_day": "usd_per_day", "usd_per_month": "usd_per_month",
}


class CLIError(Exception):
    pass


def new_key() -> str:
    return "sk-" + secrets.token_urlsafe(32)


def _yaml() -> YAML:
    y = YAML()
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def _load(path: str):
    if not os.path.exists(path):
        return {"tenants": {}}
    with open(path, encoding="utf-8") as f:
        data = _yaml().load(f)
    if data is None:
        data = {"tenants": {}}
    if data.get("tenants") is None:
        data["tenants"] = {}
    return data


@contextmanager
def _locked(path: str):
    """One edit at a time (a lock file beside the tenants file): no edit overwrites another."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f".{os.path.basename(path)}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _save(path: str, data) -> None:
    """Validate as the router will, then replace the file atomically: the real file when `path`
    is a symlink (the link stays), with the old file's mode, or 0644 for a new one."""
    path = os.path.realpath(path)
    buf = io.StringIO()
    _yaml().dump(data, buf)
    text = buf.getvalue()
    try:
        TenantsFile.model_validate(YAML(typ="safe").load(text) or {})
    except ValidationError as exc:
        raise CLIError(f"the result would not be a valid tenants file: {exc}") from exc
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tenants-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _limits(args) -> dict:
    out = {}
    for flag, field in LIMIT_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            out[field] = str(value) if isinstance(value, Decimal) else value
    return out


def cmd_add(args) -> int:
    with _locked(args.file):
        return _add(args)


def _add(args) -> int:
    data = _load(args.file)
    if args.name in data["tenants"]:
        raise CLIError(f"tenant {args.name!r} exists; use rotate-key for a new key")
    key = new_key()
    spec = {"api_key_sha256": [key_digest(key)]}
    if args.tier:
        spec["tier"] = args.tier
    if args.admin:
        spec["admin"] = True
    if args.pools:
        spec["allowed_pools"] = [p.strip() for p in args.pools.split(",") if p.strip()]
    limits = _limits(args)
    if limits:
        spec["limits"] = limits
    data["tenants"][args.name] = spec
    _save(args.file, data)
    print(f"added tenant {args.name!r} to {args.file}")
    print(f"API key (shown once, stored only as its SHA-256): {key}")
    return 0


def cmd_rotate(args) -> int:
    with _locked(args.file):
        return _rotate(args)


def _rotate(args) -> int:
    data = _load(args.file)
    spec = data["tenants"].get(args.name)
    if spec is None:
        raise CLIError(f"no tenant {args.name!r} in {args.file}")
    key = new_key()
    if args.keep_old:
        spec.setdefault("api_key_sha256", []).append(key_digest(key))
    else:
        spec["api_key_sha256"] = [key_digest(key)]
        spec.pop("api_keys", None)
    _save(args.file, data)
    kept = "the old keys stay valid until you rotate again without --keep-old" if args.keep_old else \
        "the old keys stop working within the router's reload interval"
    print(f"new API key for {args.name!r} (shown once): {key}\n{kept}")
    return 0


def cmd_list(args) -> int:
    data = TenantsFile.model_validate(read_yaml(args.file))
    print(f"{'tenant':<20} {'keys':>4} {'tier':<12} {'admin':<5} {'pools':<16} limits")
    for name, spec in sorted(data.tenants.items()):
        limits = ", ".join(f"{k}={v}" for k, v in spec.limits.model_dump().items() if v is not None) or "none"
        pools = ",".join(spec.allowed_pools) if spec.allowed_pools is not None else "all"
        keys = len(spec.api_keys) + len(spec.api_key_sha256)
        print(f"{name:<20} {keys:>4} {spec.tier or 'default':<12} {'yes' if spec.admin else 'no':<5} {pools:<16} {limits}")
    return 0


def cmd_usage(args) -> int:
    from sqlalchemy.engine import make_url

    from router.tenancy.store import QuotaStore

    url = make_url(args.ledger)  # a mistyped SQLite path would otherwise become a new, empty ledger
    if url.get_backend_name() == "sqlite" and url.database and not os.path.exists(url.database):
        raise CLIError(f"no ledger at {url.database}")
    store = QuotaStore(args.ledger)
    try:
        start, end = parse_time(args.start, "from"), parse_time(args.end, "to")
        totals = store.totals(args.tenant, start, end, args.pool)
    finally:
        store.close()
    print(f"{'tenant':<20} {'status':<10} {'requests':>9} {'prompt':>12} {'completion':>12} {'reasoning':>11} {'cost_usd':>16}")
    for t in totals:
        print(f"{t['tenant']:<20} {t['status']:<10} {t['requests']:>9} {t['prompt_tokens']:>12} "
              f"{t['completion_tokens']:>12} {t['reasoning_tokens']:>11} {usd_text(t['cost_usd']):>16}")
    if not totals:
        print("(no usage in that range)")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="magistral-tenants", description=__doc__.splitlines()[0])
    p.add_argument("--file", default=os.environ.get("TENANTS_FILE", DEFAULT_FILE),
                   help="tenants file (default: $TENANTS_FILE or configs/tenants.yaml)")
    sub = p.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="create a tenant and print its new API key once")
    add.add_argument("name")
    add.add_argument("--tier", help="price tier (default: the prices file's default tier)")
    add.add_argument("--admin", action="store_true", help="may read every tenant's usage")
    add.add_argument("--pools", help="comma-separated allowed pools (default: all)")
    for flag, field in LIMIT_FLAGS.items():
        kind = Decimal if field.startswith("usd") else int
        add.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=kind, help=field.replace("_", " "))
    rotate = sub.add_parser("rotate-key", help="give a tenant a new API key (printed once)")
    rotate.add_argument("name")
    rotate.add_argument("--keep-old", action="store_true", help="keep the old keys valid too (for a handover)")
    sub.add_parser("list", help="tenants, their key counts, tiers, pools and limits (never keys)")
    usage = sub.add_parser("usage", help="usage totals from the ledger")
    usage.add_argument("--ledger", default=os.environ.get("LEDGER_URL", DEFAULT_LEDGER),
                       help="ledger URL (default: $LEDGER_URL or sqlite:///.run/ledger.db)")
    usage.add_argument("--tenant")
    usage.add_argument("--pool")
    usage.add_argument("--from", dest="start", help="ISO date/time or Unix seconds (UTC)")
    usage.add_argument("--to", dest="end", help="ISO date/time or Unix seconds (UTC), exclusive")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"add": cmd_add, "rotate-key": cmd_rotate, "list": cmd_list, "usage": cmd_usage}
    try:
        return handlers[args.command](args)
    except (CLIError, FileNotFoundError) as exc:
        print(f"magistral-tenants: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bad date, an unreachable ledger: one line, no traceback
        message = exc.message if isinstance(exc, TenancyError) else f"{type(exc).__name__}: {exc}"
        print(f"magistral-tenants: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
