"""Keep cluster/rayservice.yaml's serveConfigV2 a verbatim copy of configs/production.yaml.

    python -m cluster.generate           # rewrite the block in cluster/rayservice.yaml
    python -m cluster.generate --check   # exit 1 (and say so) when the block is stale

production.yaml is the one source of truth for the serve applications: `serve run` /
`serve deploy` (the `ray up` cluster) read it directly, and the RayService carries the same text
(comments included) in its `serveConfigV2: |` block. Only that block is generated; the rest of
the manifest is written by hand (instance sizes, images, volumes cannot be derived from the serve
config) and checked against production.yaml by tests/cluster_defs.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = ROOT / "configs" / "production.yaml"
RAYSERVICE = ROOT / "cluster" / "rayservice.yaml"

_BLOCK_KEY = re.compile(r"^(?P<indent> *)serveConfigV2: \|[ \t]*(#.*)?$")


def render_rayservice(manifest: str, serve_config: str) -> str:
    """`manifest` with the literal block under `serveConfigV2: |` replaced by `serve_config`."""
    first = serve_config.lstrip("\n").splitlines()[:1]
    if not first or first[0].startswith((" ", "\t")) or serve_config.startswith("\n"):
        raise ValueError("the serve config must start with an unindented line (YAML block indentation)")
    lines = manifest.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if _BLOCK_KEY.match(line.rstrip("\n"))]
    if len(starts) != 1:
        raise ValueError(f"expected one `serveConfigV2: |` line in the manifest, found {len(starts)}")
    start = starts[0]
    key_indent = len(_BLOCK_KEY.match(lines[start].rstrip("\n")).group("indent"))
    # The old block: every following line that is blank or indented deeper than the key.
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > key_indent):
        end += 1
    # Blank lines at its end separate it from the next key: keep them.
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    pad = " " * (key_indent + 2)
    body = [pad + line if line.strip() else "\n" for line in serve_config.rstrip("\n").splitlines(keepends=True)]
    body[-1] = body[-1].rstrip("\n") + "\n"
    return "".join(lines[: start + 1] + body + lines[end:])


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def expected_rayservice() -> str:
    return render_rayservice(RAYSERVICE.read_text(encoding="utf-8"), PRODUCTION.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether the file is up to date")
    args = parser.parse_args(argv)
    current = RAYSERVICE.read_text(encoding="utf-8")
    wanted = expected_rayservice()
    rel = RAYSERVICE.relative_to(ROOT)
    if current == wanted:
        print(f"{rel} is up to date with {PRODUCTION.relative_to(ROOT)}")
        return 0
    if args.check:
        print(f"{rel} is stale: run `python -m cluster.generate`", file=sys.stderr)
        return 1
    RAYSERVICE.write_text(wanted, encoding="utf-8")
    print(f"wrote {rel} (serveConfigV2 from {PRODUCTION.relative_to(ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
