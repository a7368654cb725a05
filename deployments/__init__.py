"""Serve deployments that host a model behind the router: the stub replica (tests, local runs)."""
