import pytest
import yaml
from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema

from router.config import AppConfig
from router.tenants import TenantDirectory, key_digest


def local_args():
    with open("configs/local.yaml") as f:
        raw = yaml.safe_load(f)
    ServeDeploySchema.model_validate(raw)
    return raw["applications"][0]["args"]


def test_local_config_is_a_valid_serve_config_with_two_pools():
    config = AppConfig.from_args(local_args())
    by_name = {p.name: p for p in config.pools}
    assert [p.name for p in config.pools] == ["short", "long"]
    assert (by_name["short"].max_model_len, by_name["short"].max_prompt_tokens, by_name["short"].num_replicas) == (16_384, 8_192, 2)
    assert (by_name["long"].max_model_len, by_name["long"].num_replicas) == (40_960, 1)
    assert config.context_cap == 40_960


def test_tenants_file_env_override(monkeypatch):
    monkeypatch.setenv("TENANTS_FILE", "/elsewhere/tenants.yaml")
    assert AppConfig.from_args(local_args()).tenants_file == "/elsewhere/tenants.yaml"


def test_bad_config_is_refused():
    args = local_args()
    args["pools"].append(dict(args["pools"][0]))
    with pytest.raises(ValidationError):
        AppConfig.from_args(args)  # duplicate pool name
    with pytest.raises(ValidationError):
        AppConfig.from_args({**local_args(), "overflow_policy": "sometimes"})


def test_demo_tenant_authenticates(tmp_path):
    tenants = TenantDirectory.from_file("configs/tenants.yaml")
    assert tenants.authenticate("sk-local-demo").name == "demo"
    assert tenants.authenticate("sk-wrong") is None and tenants.authenticate(None) is None
    f = tmp_path / "t.yaml"
    f.write_text(f"tenants:\n  acme:\n    api_key_sha256: ['{key_digest('sk-acme')}']\n")
    assert TenantDirectory.from_file(str(f)).authenticate("sk-acme").name == "acme"


def test_one_key_for_two_tenants_is_refused():
    with pytest.raises(ValueError):
        TenantDirectory({"a": [key_digest("k")], "b": [key_digest("k")]})
