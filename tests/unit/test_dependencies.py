"""Dependencies run one way: common <- router, common <- deployments; cluster/ wires them together.

A static check of every import statement (top level and inside functions), plus a fresh
interpreter for what must import without FastAPI.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# package -> top-level packages it may not import
FORBIDDEN = {
    "common": {"router", "deployments", "cluster", "bench"},
    "router": {"deployments", "cluster", "bench"},
    "deployments": {"router", "cluster", "bench"},
}


def imported_packages(path: Path) -> set[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {(node.lineno, alias.name.split(".")[0]) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.lineno, node.module.split(".")[0]))
    return found


def violations(package: str) -> list[str]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, name in imported_packages(path):
            if name in FORBIDDEN[package]:
                out.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_downwards(package):
    assert violations(package) == []


def test_the_check_sees_a_forbidden_import(tmp_path, monkeypatch):
    """The checker itself: a router module importing deployments is reported."""
    (tmp_path / "router").mkdir()
    (tmp_path / "router" / "bad.py").write_text("def f():\n    from deployments.stub_replica import StubReplica\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert violations("router") == ["router/bad.py:2 imports deployments"]



def test_tenancy_imports_without_fastapi():
    """The tenants CLI (and all of router.tenancy) must run where FastAPI is not wanted."""
    code = ("import sys, router.tenancy.cli, router.tenancy.gate, router.tenancy.settlement, "
            "router.tenancy.usage_report; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette', 'ray')); "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
