"""cluster.local's ingress modes: the environment Serve reads at import."""

import pytest

from cluster.local import ingress_env, worker_env


def test_proxy_mode_switches_haproxy_off_explicitly():
    assert ingress_env("proxy") == {"RAY_SERVE_ENABLE_HA_PROXY": "0"}


def test_haproxy_mode_takes_free_ports_of_its_own():
    env = ingress_env("haproxy")
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    ports = [int(env[k]) for k in ("RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
                                   "RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")]
    assert len(set(ports)) == 4 and not {8500, 9500, 8404, 9101} & set(ports)
    with pytest.raises(ValueError):
        ingress_env("direct")


def test_workers_get_the_serve_settings_with_the_rest():
    env = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "LEDGER_URL": "sqlite:///x.db", "HOME": "/root",
           "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    forwarded = worker_env(env)
    assert forwarded["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and forwarded["LEDGER_URL"] == "sqlite:///x.db"
    assert "HOME" not in forwarded and forwarded["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4318"
