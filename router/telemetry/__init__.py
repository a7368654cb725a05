"""Traces (OpenTelemetry) and metrics (Ray's metrics system) for the ingress and the replicas."""
