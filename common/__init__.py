"""What the router and the model replicas share, importing neither: the replica protocol and its
stat names, the Tekken token counter, the config models, the engine model of a GPU replica, and
replica-side telemetry (OTel setup, the generation span, replica gauges)."""
