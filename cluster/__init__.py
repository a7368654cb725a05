"""Ray cluster helpers: the local cluster used by `make run` and the cluster tests."""
