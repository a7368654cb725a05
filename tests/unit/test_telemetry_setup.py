"""Tracing set-up from the standard OTEL_* environment (no Ray)."""

import pytest
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from common.telemetry.otel_setup import (TelemetryConfigError, build_provider, engine_traces_endpoint,
                                         exporter_names, forwarded_env, otlp_protocol)


def test_no_endpoint_means_no_exporter_and_nothing_recorded():
    assert exporter_names({}) == []
    provider = build_provider({}, "ingress")
    assert provider.sampler is ALWAYS_OFF
    span = provider.get_tracer("t").start_span("x")
    assert not span.is_recording()
    assert span.get_span_context().is_valid  # a trace id still exists (x-trace-id, ledger rows)


def test_an_endpoint_turns_otlp_on_and_the_env_sampler_applies():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_SAMPLER": "always_on"}
    assert exporter_names(env) == ["otlp"]
    provider = build_provider(env, "ingress")
    assert provider.get_tracer("t").start_span("x").is_recording()
    provider.shutdown()


def test_explicit_exporters_console_none_and_unknown():
    assert exporter_names({"OTEL_TRACES_EXPORTER": "console"}) == ["console"]
    assert exporter_names({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}) == []
    with pytest.raises(TelemetryConfigError, match="zipkin"):
        exporter_names({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_protocols():
    assert otlp_protocol({}) == "http/protobuf"
    assert otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == "grpc"
    # the traces-specific variable wins over the general one
    assert otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}) \
        == "http/protobuf"
    with pytest.raises(TelemetryConfigError, match="http/json"):
        otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_grpc_provider_builds():
    provider = build_provider({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
                               "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "replica:short")
    assert provider.resource.attributes["magistral.component"] == "replica:short"
    provider.shutdown()


def test_service_name_default_and_override():
    assert build_provider({}, "ingress").resource.attributes["service.name"] == "magistral-serve"
    named = build_provider({"OTEL_SERVICE_NAME": "llm-gw"}, "ingress")
    assert named.resource.attributes["service.name"] == "llm-gw"


def test_sdk_disabled():
    assert build_provider({"OTEL_SDK_DISABLED": "true"}, "ingress") is None
    assert engine_traces_endpoint({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}) is None


def test_engine_endpoint_is_a_full_url_for_http_and_as_given_for_grpc():
    assert engine_traces_endpoint({}) is None
    assert engine_traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}) == "http://c:4318/v1/traces"
    assert engine_traces_endpoint({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:9/x"}) == "http://c:9/x"
    assert engine_traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
                                   "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == "http://c:4317"


def test_launcher_forwards_only_otel_variables():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_BSP_SCHEDULE_DELAY": "100", "HOME": "/root"}
    assert forwarded_env(env) == {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_BSP_SCHEDULE_DELAY": "100"}
