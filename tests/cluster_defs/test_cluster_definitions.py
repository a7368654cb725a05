"""cluster/ray-cluster.yaml (`ray up`, AWS) and cluster/rayservice.yaml (KubeRay) against
configs/production.yaml, the one source of truth, and against their schemas. No Ray cluster.

- ray-cluster.yaml: Ray's own autoscaler config check (prepare_config + validate_config, which
  apply ray/autoscaler/ray-schema.json with jsonschema), offline.
- rayservice.yaml: a field allow-list (paths, types, required) derived from KubeRay's RayService
  CRD (crd_fields.py, kuberay_rayservice_fields.txt), and Ray Serve's ServeDeploySchema for
  serveConfigV2, which must be production.yaml verbatim (`python -m cluster.generate`).
- Both: every GPU pool's node type / worker group offers the Ray resource its engine asks for,
  holds a whole number of TP groups, has node bounds that match the pool's autoscaling, and no
  other pool's engines fit on it; the model directory and /etc/magistral are where the config
  reads them; the Ray version and image agree with pyproject.toml.
"""

from __future__ import annotations

import copy
import json
import math
import posixpath
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from cluster import generate
from common.config import AppConfig, PoolConfig, VLLMEngine
from tests.cluster_defs.crd_fields import check_manifest, derive, load_allowlist

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = ROOT / "configs" / "production.yaml"
RAY_CLUSTER = ROOT / "cluster" / "ray-cluster.yaml"
RAYSERVICE = ROOT / "cluster" / "rayservice.yaml"
POOL_LABEL = "magistral.ai/pool"
GPU_TAINT = "nvidia.com/gpu"


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


PROD = _load(PRODUCTION)
ROUTER_APPS = [a for a in PROD["applications"] if a["import_path"] == "cluster.app:build_app"]
assert len(ROUTER_APPS) == 1, "production.yaml must have one router application"
CONFIG = AppConfig.model_validate(ROUTER_APPS[0]["args"])  # no env overrides: the file as written
GPU_POOLS = [p for p in CONFIG.pools if isinstance(p.engine, VLLMEngine) and p.engine.device == "gpu"]
CLUSTER = _load(RAY_CLUSTER)
RAYSERVICE_TEXT = RAYSERVICE.read_text(encoding="utf-8")
SERVICE = yaml.safe_load(RAYSERVICE_TEXT)
RAY_CLUSTER_CONFIG = SERVICE["spec"]["rayClusterConfig"]
WORKER_GROUPS = RAY_CLUSTER_CONFIG["workerGroupSpecs"]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
RAY_PIN = next(re.fullmatch(r"ray\[serve\]==(\S+)", d).group(1)
               for d in PYPROJECT["project"]["dependencies"] if d.startswith("ray[serve]=="))
IMAGE = f"rayproject/ray:{RAY_PIN}-py311-gpu"
MODEL_DIRS = sorted({p.engine.model_source for p in GPU_POOLS})
ETC_DIRS = sorted({posixpath.dirname(CONFIG.tenants_file), posixpath.dirname(CONFIG.prices_file)})


def test_production_config_is_valid_for_router_and_serve():
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(PROD)  # the check `serve run` / the RayService makes
    assert GPU_POOLS, "production.yaml has no GPU pool"
    assert len(MODEL_DIRS) == 1 and MODEL_DIRS[0].startswith("/"), MODEL_DIRS
    # The router reads the model's tokenizer and system prompt from the same directory.
    for path in (CONFIG.tokenizer_path, CONFIG.system_prompt_file):
        assert path and path.startswith(MODEL_DIRS[0] + "/"), path
    assert ETC_DIRS == ["/etc/magistral"], ETC_DIRS


def test_gpu_pools_use_accelerator_types_ray_knows():
    from ray.util.accelerators import accelerators

    known = {v for k, v in vars(accelerators).items() if k.startswith("NVIDIA_")}
    for pool in GPU_POOLS:
        assert pool.engine.accelerator_type or pool.engine.custom_resources, f"pool {pool.name} asks for any GPU"
        if pool.engine.accelerator_type:
            assert pool.engine.accelerator_type in known, pool.engine.accelerator_type


# -- what a node offers a pool ------------------------------------------------------------------


def replicas_fitting(pool: PoolConfig, resources: dict[str, float]) -> int:
    """Replicas of `pool` one node with `resources` holds: each needs tensor_parallel_size
    bundles of {GPU: 1, **custom_resources} (deployments/vllm_config.py), plus the
    accelerator_type:<X> resource ray.serve.llm adds (0.001 per bundle)."""
    engine = pool.engine
    tp = engine.tensor_parallel_size
    fits = int(resources.get("GPU", 0)) // tp
    if engine.accelerator_type and not resources.get(f"accelerator_type:{engine.accelerator_type}"):
        return 0
    for name, per_gpu in engine.custom_resources.items():
        fits = min(fits, int(resources.get(name, 0) // (per_gpu * tp)))
    return fits


def check_node_for_pool(pool: PoolConfig, resources: dict[str, float], where: str) -> int:
    engine = pool.engine
    gpus = int(resources.get("GPU", 0))
    tp = engine.tensor_parallel_size
    assert gpus >= tp, f"{where}: {gpus} GPUs < tensor_parallel_size {tp} (a TP group is on one node)"
    assert gpus % tp == 0, f"{where}: {gpus} GPUs is not a multiple of tensor_parallel_size {tp}"
    if engine.accelerator_type:
        key = f"accelerator_type:{engine.accelerator_type}"
        assert resources.get(key) == 1, f"{where}: wants {key}: 1 (as Ray's own detection reports), has {resources}"
    for name, per_gpu in engine.custom_resources.items():
        assert resources.get(name) == per_gpu * gpus, f"{where}: wants {name}: {per_gpu} per GPU, has {resources}"
    fits = replicas_fitting(pool, resources)
    assert fits == gpus // tp, f"{where}: holds {fits} replicas, wants {gpus // tp}"
    for other in GPU_POOLS:
        if other.name != pool.name:
            assert replicas_fitting(other, resources) == 0, f"{where}: pool {other.name}'s engines fit there too"
    return fits


def nodes_for(replicas: int, per_node: int) -> int:
    return math.ceil(replicas / per_node)


# -- cluster/ray-cluster.yaml -------------------------------------------------------------------


def test_ray_cluster_passes_rays_own_config_check():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(CLUSTER)))


def test_ray_cluster_check_is_live():
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = copy.deepcopy(CLUSTER)
    bad["available_node_types"]["head"]["resourcez"] = {"CPU": 1}
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


def test_ray_cluster_head_is_cpu_only():
    head = CLUSTER["available_node_types"][CLUSTER["head_node_type"]]
    assert head["resources"].get("GPU") == 0 and head["resources"].get("CPU", 0) > 0
    assert POOL_LABEL not in head.get("labels", {})


def _cluster_gpu_node_types() -> dict[str, dict]:
    return {name: t for name, t in CLUSTER["available_node_types"].items() if name != CLUSTER["head_node_type"]}


def test_ray_cluster_node_labels_are_valid_and_name_pools():
    from ray._private.label_utils import validate_node_label_syntax, validate_node_labels

    pool_names = {p.name for p in GPU_POOLS}
    for name, node_type in _cluster_gpu_node_types().items():
        labels = node_type.get("labels", {})
        validate_node_labels(labels)
        validate_node_label_syntax(labels)
        assert labels.get(POOL_LABEL) in pool_names, f"node type {name}: label {POOL_LABEL} names no GPU pool"
        assert node_type["resources"].get("GPU", 0) > 0, name


@pytest.mark.parametrize("pool", GPU_POOLS, ids=lambda p: p.name)
def test_ray_cluster_node_type_serves_pool(pool: PoolConfig):
    types = {n: t for n, t in _cluster_gpu_node_types().items() if t.get("labels", {}).get(POOL_LABEL) == pool.name}
    if not pool.enabled:
        assert not types, f"pool {pool.name} is disabled (bring-your-own hosts): no node type"
        return
    assert len(types) == 1, f"pool {pool.name}: want one node type labelled {POOL_LABEL}={pool.name}: {list(types)}"
    (name, node_type), = types.items()
    per_node = check_node_for_pool(pool, node_type["resources"], f"node type {name}")
    scaling = pool.serve_scaling().get("autoscaling_config") or {
        "min_replicas": pool.num_replicas, "max_replicas": pool.num_replicas}
    for bound in ("min", "max"):
        want = nodes_for(scaling[f"{bound}_replicas"], per_node)
        assert node_type[f"{bound}_workers"] == want, (
            f"node type {name}: {bound}_workers {node_type[f'{bound}_workers']}, want {want} for the pool's "
            f"{bound}_replicas {scaling[f'{bound}_replicas']} at {per_node} replicas per node")


def test_ray_cluster_max_workers_is_the_sum():
    assert CLUSTER["max_workers"] == sum(t.get("max_workers", 0) for t in _cluster_gpu_node_types().values())


@pytest.mark.parametrize("pool", [p for p in GPU_POOLS if not p.enabled], ids=lambda p: p.name)
def test_ray_cluster_documents_bring_your_own_hosts(pool: PoolConfig):
    """A disabled pool's hosts join by hand: the file's comment gives their `ray start`."""
    starts = [line for line in RAY_CLUSTER.read_text(encoding="utf-8").splitlines()
              if line.lstrip().startswith("#") and "ray start --address=" in line
              and f"{POOL_LABEL}={pool.name}" in line]
    assert len(starts) == 1, f"no `ray start` comment for pool {pool.name}"
    gpus = int(re.search(r"--num-gpus=(\d+)", starts[0]).group(1))
    resources = json.loads(re.search(r"--resources='([^']*)'", starts[0]).group(1))
    check_node_for_pool(pool, {"GPU": gpus, **resources}, f"`ray start` comment for {pool.name}")


def test_ray_cluster_provides_model_and_config_files():
    model_dir = MODEL_DIRS[0]
    init = " ".join(CLUSTER["initialization_commands"])
    setup = " ".join(CLUSTER["setup_commands"])
    assert model_dir in init and model_dir in setup, "the weights are fetched into engine.model_source"
    # The host's /models is the container's.
    mount_root = "/" + model_dir.strip("/").split("/")[0]
    assert f"-v {mount_root}:{mount_root}" in CLUSTER["docker"]["run_options"]
    assert "/etc/magistral" in CLUSTER["file_mounts"]
    assert '[vllm-gpu]' in setup and "~/magistral-serve" in CLUSTER["file_mounts"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert "LEDGER_URL" in " ".join(CLUSTER[key]), key
    assert CLUSTER["docker"]["image"] == IMAGE


# -- cluster/rayservice.yaml --------------------------------------------------------------------


def test_rayservice_fields_are_in_the_crd_allowlist():
    assert SERVICE["apiVersion"] == "ray.io/v1" and SERVICE["kind"] == "RayService"
    assert check_manifest(SERVICE, load_allowlist()) == []


def test_rayservice_allowlist_check_is_live():
    bad = copy.deepcopy(SERVICE)
    group = bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    group["replicas"] = "1"
    group["rayStartParams"]["num-gpus"] = 4
    group["template"]["spec"]["hostNetwork"] = True
    del group["groupName"]
    problems = "\n".join(check_manifest(bad, load_allowlist()))
    assert "workerGroupSpecs[0].replicas: str '1' where the CRD wants integer" in problems
    assert "workerGroupSpecs[0].rayStartParams.num-gpus: int 4 where the CRD wants string" in problems
    assert "workerGroupSpecs[0].template.spec.hostNetwork: not in the CRD field allow-list" in problems
    assert "workerGroupSpecs[0]: missing required field 'groupName'" in problems


def test_crd_allowlist_derivation():
    """crd_fields.derive on a miniature CRD: paths, maps, types, required fields, unknown keys."""
    crd = {"spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": {
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
            "spec": {"type": "object", "required": ["groups"], "properties": {
                "groups": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                    "name": {"type": "string"}, "replicas": {"type": "integer"},
                    "params": {"type": "object", "additionalProperties": {"type": "string"}},
                    "limits": {"type": "object", "additionalProperties": {
                        "anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True}},
                }}},
            }},
        }}}}]}}
    good = {"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n", "labels": {"a.b/c": "d"}},
            "spec": {"groups": [{"name": "g", "replicas": 1, "params": {"num-gpus": "2"}, "limits": {"cpu": 4}}]}}
    fields, problems = derive(crd, good)
    assert problems == []
    assert {p: (f.type, f.required) for p, f in fields.items() if p.startswith("spec.")} == {
        "spec.groups": ("array", True), "spec.groups[]": ("object", False),
        "spec.groups[].name": ("string", True), "spec.groups[].replicas": ("integer", False),
        "spec.groups[].params": ("object", False), "spec.groups[].params.*": ("string", False),
        "spec.groups[].limits": ("object", False), "spec.groups[].limits.*": ("int-or-string", False),
    }
    assert fields["metadata.labels.*"].type == "string"
    bad = copy.deepcopy(good)
    bad["spec"]["groups"][0].update(replicas="1", extra=True)
    del bad["spec"]["groups"][0]["name"]
    _, problems = derive(crd, bad)
    assert sorted(problems) == sorted([
        "spec.groups[]: missing required field 'name'",
        "spec.groups[].replicas: str '1' where the CRD wants integer",
        "spec.groups[].extra: not in the CRD",
    ])


def test_rayservice_serve_config_is_production_yaml():
    assert generate.expected_rayservice() == RAYSERVICE_TEXT, "stale: run `python -m cluster.generate`"
    serve_config = SERVICE["spec"]["serveConfigV2"]
    assert serve_config == PRODUCTION.read_text(encoding="utf-8")
    assert yaml.safe_load(serve_config) == PROD


def test_generate_replaces_only_the_serve_config_block():
    manifest = "a: 1\nspec:\n  serveConfigV2: |\n    old: 1\n\n    older: 2\n\n  other:\n    key: v\n"
    out = generate.render_rayservice(manifest, "# c\nnew:\n  - x: 1\n\n  - y: 2\n")
    assert out == ("a: 1\nspec:\n  serveConfigV2: |\n    # c\n    new:\n      - x: 1\n\n      - y: 2\n"
                   "\n  other:\n    key: v\n")
    parsed = yaml.safe_load(out)
    assert yaml.safe_load(parsed["spec"]["serveConfigV2"]) == {"new": [{"x": 1}, {"y": 2}]}
    assert parsed["spec"]["other"] == {"key": "v"}
    assert generate.render_rayservice(out, "# c\nnew:\n  - x: 1\n\n  - y: 2\n") == out
    with pytest.raises(ValueError):
        generate.render_rayservice("spec: {}\n", "a: 1\n")


def _resources_param(params: dict[str, str]) -> dict[str, float]:
    """rayStartParams' `resources`, read as KubeRay does (quotes trimmed, then JSON)."""
    raw = params.get("resources")
    return json.loads(raw.strip("'\"` ")) if raw else {}


def _group_resources(group: dict) -> dict[str, float]:
    params = group["rayStartParams"]
    resources = _resources_param(params)
    assert "GPU" not in resources, "GPUs go in num-gpus (ray start rejects GPU in --resources)"
    return {"GPU": int(params["num-gpus"]), **resources}


def _pod_templates() -> list[tuple[str, dict]]:
    head = RAY_CLUSTER_CONFIG["headGroupSpec"]
    return [("head", head["template"]["spec"])] + [(g["groupName"], g["template"]["spec"]) for g in WORKER_GROUPS]


def test_rayservice_head_is_cpu_only():
    head = RAY_CLUSTER_CONFIG["headGroupSpec"]
    assert head["rayStartParams"].get("num-gpus") == "0"
    for container in head["template"]["spec"]["containers"]:
        for kind in ("requests", "limits"):
            assert GPU_TAINT not in container.get("resources", {}).get(kind, {})
    assert "nodeSelector" not in head["template"]["spec"] or POOL_LABEL not in head["template"]["spec"]["nodeSelector"]


def test_rayservice_worker_groups_name_pools():
    pool_names = {p.name for p in GPU_POOLS}
    for group in WORKER_GROUPS:
        assert group["template"]["spec"].get("nodeSelector", {}).get(POOL_LABEL) in pool_names, group["groupName"]


@pytest.mark.parametrize("pool", GPU_POOLS, ids=lambda p: p.name)
def test_rayservice_worker_group_serves_pool(pool: PoolConfig):
    groups = [g for g in WORKER_GROUPS if g["template"]["spec"].get("nodeSelector", {}).get(POOL_LABEL) == pool.name]
    assert len(groups) == 1, f"pool {pool.name}: want one worker group with nodeSelector {POOL_LABEL}={pool.name}"
    group = groups[0]
    where = f"worker group {group['groupName']}"
    resources = _group_resources(group)
    per_pod = check_node_for_pool(pool, resources, where)
    spec = group["template"]["spec"]
    # The pod gets the GPUs Ray is told about, and tolerates the GPU and pool taints.
    (container,) = spec["containers"]
    for kind in ("requests", "limits"):
        assert str(container["resources"][kind][GPU_TAINT]) == str(resources["GPU"]), (where, kind)
    taints = {(t["key"], t.get("value"), t["effect"]) for t in spec["tolerations"]}
    assert any(t["key"] == GPU_TAINT and t["operator"] == "Exists" and t["effect"] == "NoSchedule"
               for t in spec["tolerations"]), where
    assert (POOL_LABEL, pool.name, "NoSchedule") in taints, where
    scaling = pool.serve_scaling().get("autoscaling_config") or {
        "min_replicas": pool.num_replicas, "max_replicas": pool.num_replicas}
    bounds = ("min", "max") if pool.enabled else ("max",)
    for bound in bounds:
        want = nodes_for(scaling[f"{bound}_replicas"], per_pod)
        assert group[f"{bound}Replicas"] == want, (
            f"{where}: {bound}Replicas {group[f'{bound}Replicas']}, want {want} for the pool's "
            f"{bound}_replicas {scaling[f'{bound}_replicas']} at {per_pod} replicas per pod")
    if pool.enabled:
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], where
    else:  # nothing asks for its resource: no pod until the pool is enabled
        assert group["minReplicas"] == group.get("replicas", 0) == 0, where


def test_rayservice_pods_mount_models_config_and_ledger_secret():
    model_dir = MODEL_DIRS[0]
    for name, spec in _pod_templates():
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            # engine.model_source (and the router's tokenizer / system prompt) under a hostPath mount.
            model_mounts = [p for p in mounts if model_dir == p or model_dir.startswith(p.rstrip("/") + "/")]
            assert model_mounts, f"{name}: nothing mounted at {model_dir}"
            model_volume = volumes[mounts[model_mounts[0]]["name"]]
            assert model_volume["hostPath"]["path"] == model_mounts[0], name
            # tenants_file and prices_file.
            etc = mounts.get(ETC_DIRS[0])
            assert etc, f"{name}: nothing mounted at {ETC_DIRS[0]}"
            assert "secret" in volumes[etc["name"]] or "configMap" in volumes[etc["name"]], name
            # LEDGER_URL (with the password) from a secret.
            env = {e["name"]: e for e in container["env"]}
            assert env["LEDGER_URL"]["valueFrom"]["secretKeyRef"]["key"], name
            # The package: the pinned image, plus this release's wheel from the mounted ConfigMap.
            assert container["image"] == IMAGE, name
            wheel = f"magistral_serve-{PYPROJECT['project']['version']}-py3-none-any.whl"
            (install,) = container["args"]
            assert wheel in install and "[vllm-gpu]" in install and "ray start" not in install, name
            wheel_dir = posixpath.dirname(re.search(r"(/\S+\.whl)", install).group(1))
            assert "configMap" in volumes[mounts[wheel_dir]["name"]], name


def test_rayservice_ray_version_matches_the_pin():
    assert RAY_CLUSTER_CONFIG["rayVersion"] == RAY_PIN
    assert SERVICE["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
