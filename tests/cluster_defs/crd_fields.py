"""A field allow-list for cluster/rayservice.yaml, taken from KubeRay's RayService CRD.

The CRD (18 000 lines) is not in the repository and cannot be fetched at test time, so the test
checks the manifest against a small list of the key paths it may use, with their CRD types and
whether the CRD requires them (kuberay_rayservice_fields.txt beside this file). This module
reads and applies that list, and re-derives it from a CRD file:

    python -m tests.cluster_defs.crd_fields path/to/ray.io_rayservices.yaml --kuberay v1.7.0 \
        > tests/cluster_defs/kuberay_rayservice_fields.txt

(ray-operator/config/crd/bases/ray.io_rayservices.yaml of the KubeRay release). Deriving fails
on any manifest path the CRD does not have, on a value of the wrong type, or on a missing
required field, so a field added to the manifest enters the list only through the CRD.

Paths: `a.b` for an object's field, `a[]` for a list's items, `a.*` for a map's values
(rayStartParams, nodeSelector, resources.limits, labels...). Types: object, array, string,
integer, boolean, number, int-or-string, any.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ALLOWLIST = HERE / "kuberay_rayservice_fields.txt"
MANIFEST = HERE.parent.parent / "cluster" / "rayservice.yaml"

# The CRD's schema has `metadata: {type: object}` only: the API server checks ObjectMeta itself.
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
OBJECT_META = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                   "labels": _STRING_MAP, "annotations": _STRING_MAP},
}


@dataclass(frozen=True)
class Field:
    type: str
    required: bool = False


def load_allowlist(path: Path = ALLOWLIST) -> dict[str, Field]:
    fields: dict[str, Field] = {"": Field("object")}  # the manifest itself
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "required"):
            raise ValueError(f"{path.name}: bad line {raw!r} (want: PATH TYPE [required])")
        fields[parts[0]] = Field(parts[1], len(parts) == 3)
    return fields


def type_ok(expected: str, value: Any) -> bool:
    if expected == "any":
        return True
    if expected == "object":
        return isinstance(value, dict)
    if expected == "array":
        return isinstance(value, list)
    if expected == "string":
        return isinstance(value, str)
    if expected == "boolean":
        return isinstance(value, bool)
    if expected == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected == "int-or-string":
        return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
    raise ValueError(f"unknown type {expected!r}")


def check_manifest(manifest: Any, allowed: dict[str, Field]) -> list[str]:
    """Every problem of `manifest` against the allow-list: unknown paths, wrong types, missing
    required fields. Empty when it conforms."""
    problems: list[str] = []

    def visit(path: str, where: str, value: Any) -> None:
        # path: the allow-list key (a[], a.*); where: the place in this manifest (a[2], a.key).
        field = allowed.get(path)
        if field is None:
            problems.append(f"{where}: not in the CRD field allow-list ({path})")
            return
        if not type_ok(field.type, value):
            problems.append(f"{where}: {type(value).__name__} {value!r} where the CRD wants {field.type}")
            return
        if isinstance(value, list):
            for i, item in enumerate(value):
                visit(f"{path}[]", f"{where}[{i}]", item)
        elif isinstance(value, dict):
            if f"{path}.*" in allowed:  # a map: its keys are data
                for key, item in value.items():
                    visit(f"{path}.*", f"{where}.{key}", item)
                return
            for key, item in value.items():
                visit(f"{path}.{key}" if path else str(key), f"{where}.{key}" if where else str(key), item)
            prefix = f"{path}." if path else ""
            for name, child in allowed.items():
                rest = name[len(prefix):]
                if child.required and name.startswith(prefix) and "." not in rest and "[" not in rest:
                    if rest not in value:
                        problems.append(f"{where or '(root)'}: missing required field {rest!r}")

    visit("", "", manifest)
    return problems


# -- deriving the list from the CRD -------------------------------------------------------------


def _schema_type(schema: dict[str, Any]) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "int-or-string"
    if "type" in schema:
        return schema["type"]
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return "any"
    raise ValueError(f"schema without a type: {sorted(schema)}")


def derive(crd: dict[str, Any], manifest: Any) -> tuple[dict[str, Field], list[str]]:
    """The allow-list entries `manifest` uses, from the CRD's v1 schema, and the problems found."""
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    root = versions["v1"]["schema"]["openAPIV3Schema"]
    root = {**root, "properties": {**root["properties"], "metadata": OBJECT_META}}
    fields: dict[str, Field] = {}
    problems: list[str] = []

    def visit(path: str, schema: dict[str, Any] | None, value: Any, required: bool) -> None:
        if schema is None:
            problems.append(f"{path}: not in the CRD")
            return
        kind = _schema_type(schema)
        if not type_ok(kind, value):
            problems.append(f"{path}: {type(value).__name__} {value!r} where the CRD wants {kind}")
            return
        fields[path] = Field(kind, required)
        if isinstance(value, list) and kind == "array":
            for item in value:
                visit(f"{path}[]", schema.get("items"), item, False)
        elif isinstance(value, dict) and kind == "object":
            extra = schema.get("additionalProperties")
            if isinstance(extra, dict) and not schema.get("properties"):  # a map
                for item in value.values():
                    visit(f"{path}.*", extra, item, False)
                return
            props = schema.get("properties", {})
            need = set(schema.get("required", []))
            for name in sorted(need - set(value)):
                problems.append(f"{path or '(root)'}: missing required field {name!r}")
            for key, item in value.items():
                visit(f"{path}.{key}" if path else str(key), props.get(key), item, key in need)

    visit("", root, manifest, False)
    return fields, problems


def format_allowlist(fields: dict[str, Field], source: str) -> str:
    lines = [
        "# Field allow-list for cluster/rayservice.yaml: every key path the manifest may use, with",
        "# its type and whether the CRD requires it. Derived from the RayService CRD (apiVersion",
        f"# ray.io/v1) of {source}:",
        "#   ray-operator/config/crd/bases/ray.io_rayservices.yaml",
        "# by `python -m tests.cluster_defs.crd_fields CRD_FILE --kuberay VERSION > this file`;",
        "# metadata.* is Kubernetes ObjectMeta (not described by the CRD). Do not add paths by hand.",
        "# PATH  TYPE  [required]   (a.b field, a[] list item, a.* map value)",
    ]
    for path in sorted(p for p in fields if p):
        field = fields[path]
        lines.append(f"{path} {field.type}" + (" required" if field.required else ""))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="derive the RayService field allow-list from a CRD file")
    parser.add_argument("crd", type=Path, help="ray.io_rayservices.yaml of a KubeRay release")
    parser.add_argument("--kuberay", required=True, help="the KubeRay release (e.g. v1.7.0)")
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    args = parser.parse_args(argv)
    crd = yaml.safe_load(args.crd.read_text(encoding="utf-8"))
    manifest = yaml.safe_load(args.manifest.read_text(encoding="utf-8"))
    fields, problems = derive(crd, manifest)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    sys.stdout.write(format_allowlist(fields, f"KubeRay {args.kuberay}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
