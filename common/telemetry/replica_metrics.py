"""A replica's load gauges through Ray's metrics system (ray.serve.metrics), set from its routing
stats every stats period, off the request path. Names get Ray's `ray_` prefix on the endpoint."""

from __future__ import annotations

# Replica gauges, set from each replica's routing stats (every stats period, off the request path).
REPLICA_GAUGES = {
    "queued_tokens": ("magistral_replica_outstanding_tokens", "Prompt + expected completion tokens a replica holds."),
    "ongoing_requests": ("magistral_replica_ongoing_requests", "Requests a replica holds."),
    "engine_waiting": ("magistral_replica_waiting_requests", "Requests the engine has queued (vLLM)."),
    "kv_cache_usage": ("magistral_replica_kv_cache_usage", "Fraction of the KV cache in use (vLLM)."),
}



class ReplicaMetrics:
    """A replica's load gauges; create inside the Serve replica."""

    def __init__(self, pool: str, accelerator: str) -> None:
        from ray.serve import metrics

        self._tags = {"pool": pool, "accelerator": accelerator}
        self._gauges = {stat: metrics.Gauge(name, description=desc, tag_keys=("pool", "accelerator"))
                        for stat, (name, desc) in REPLICA_GAUGES.items()}

    def update(self, stats: dict) -> None:
        for stat, gauge in self._gauges.items():
            if stat in stats:
                gauge.set(float(stats[stat]), tags=self._tags)
