import pytest
import yaml
from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema

from router.config import AppConfig


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


def test_files_and_ledger_env_overrides(monkeypatch):
    monkeypatch.setenv("TENANTS_FILE", "/elsewhere/tenants.yaml")
    monkeypatch.setenv("PRICES_FILE", "/elsewhere/prices.yaml")
    monkeypatch.setenv("LEDGER_URL", "postgresql://u@db/ledger")
    config = AppConfig.from_args(local_args())
    assert (config.tenants_file, config.prices_file, config.ledger_url) == (
        "/elsewhere/tenants.yaml", "/elsewhere/prices.yaml", "postgresql://u@db/ledger")
    assert config.router_replicas == 2


def test_bad_config_is_refused():
    args = local_args()
    args["pools"].append(dict(args["pools"][0]))
    with pytest.raises(ValidationError):
        AppConfig.from_args(args)  # duplicate pool name
    with pytest.raises(ValidationError):
        AppConfig.from_args({**local_args(), "overflow_policy": "sometimes"})
