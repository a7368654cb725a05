"""One TracerProvider per process, configured by the standard OTEL_* environment only.

    OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT   where spans go
    OTEL_EXPORTER_OTLP_PROTOCOL / OTEL_EXPORTER_OTLP_TRACES_PROTOCOL   http/protobuf (default) | grpc
    OTEL_TRACES_EXPORTER      otlp | console | none (comma-separated); default: otlp when an
                              endpoint is set, none otherwise
    OTEL_TRACES_SAMPLER (+ _ARG), OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_*,
    OTEL_SDK_DISABLED         read by the SDK itself

Spans leave through a BatchSpanProcessor (a background thread), never on the request path. With
nothing to export, spans are not recorded (ALWAYS_OFF) but trace ids still exist, so responses and
ledger rows carry one and a client's traceparent is still continued.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

logger = logging.getLogger(__name__)

SERVICE_NAME = "magistral-serve"
TRACER_NAME = "magistral"
_lock = threading.Lock()
_configured = False


class TelemetryConfigError(ValueError):
    pass


def exporter_names(env: Mapping[str, str]) -> list[str]:
    """Which exporters the environment asks for (the OTEL_TRACES_EXPORTER rules, except that an
    unset variable means otlp only when an endpoint is given)."""
    raw = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not raw:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return ["otlp"] if endpoint else []
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = set(names) - {"otlp", "console", "none"}
    if unknown:
        raise TelemetryConfigError(f"OTEL_TRACES_EXPORTER: unsupported exporter(s) {sorted(unknown)}; "
                                   "use otlp, console or none")
    return [] if "none" in names else names


def otlp_protocol(env: Mapping[str, str]) -> str:
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip().lower()
    if protocol not in ("http/protobuf", "grpc"):
        raise TelemetryConfigError(f"OTLP protocol {protocol!r} is not supported; use http/protobuf or grpc")
    return protocol


def check_tracing_env(env: Mapping[str, str]) -> None:
    """Raise TelemetryConfigError (a ValueError) for settings configure_tracing would refuse."""
    if "otlp" in exporter_names(env):
        otlp_protocol(env)


def _exporter(name: str, env: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if otlp_protocol(env) == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter()  # endpoint, headers, timeout, compression: from the environment


def build_provider(env: Mapping[str, str], component: str) -> TracerProvider | None:
    """The provider this environment describes; None when the SDK is disabled."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = exporter_names(env)
    # Resource.create also reads OTEL_RESOURCE_ATTRIBUTES; attributes given here win over it.
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or SERVICE_NAME,
                                "magistral.component": component, "process.pid": os.getpid()})
    provider = TracerProvider(resource=resource, sampler=None if names else ALWAYS_OFF)
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, env)))
    return provider


def configure_tracing(component: str) -> trace.Tracer:
    """Install this process's TracerProvider once (the ingress and every replica call it) and
    return our tracer. A bad setting is logged and tracing stays off rather than failing startup."""
    global _configured
    with _lock:
        if not _configured:
            _configured = True
            try:
                provider = build_provider(os.environ, component)
            except TelemetryConfigError as exc:
                logger.error("tracing disabled: %s", exc)
                provider = None
            if provider is not None:
                trace.set_tracer_provider(provider)
                logger.info("tracing: exporters %s", exporter_names(os.environ) or "none")
    return trace.get_tracer(TRACER_NAME)


def forwarded_env(env: Mapping[str, str]) -> dict[str, str]:
    """The OTEL_* variables a launcher passes on to every Ray worker."""
    return {k: v for k, v in env.items() if k.startswith("OTEL_")}


def engine_traces_endpoint(env: Mapping[str, str]) -> str | None:
    """The OTLP traces URL for vLLM's own tracer (its `otlp_traces_endpoint`), or None when spans
    are not exported. vLLM uses the URL as given, so an http endpoint gets its /v1/traces path."""
    try:
        if "otlp" not in exporter_names(env) or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return None
        protocol = otlp_protocol(env)
    except TelemetryConfigError:
        return None
    specific = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if specific:
        return specific
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318" if protocol != "grpc" else "localhost:4317")
    return base if protocol == "grpc" else base.rstrip("/") + "/v1/traces"
