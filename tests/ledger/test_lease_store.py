"""Quota leases on PostgreSQL (the session's throwaway server, tests/postgres.py): four ingress
processes syncing under the tenant's advisory lock admit exactly the budget. The same test on
SQLite, and the rest of the lease store's tests, are in tests/unit/test_lease_store.py."""

import os

import psycopg

from router.tenancy.quota import Limits
from router.tenancy.store import COMPLETED, QuotaStore
from tests.unit.test_lease_store import TENANT, run_processes


def test_four_processes_admit_exactly_the_budget_on_postgresql(postgres_url):
    server = postgres_url.rsplit("/", 1)[0]
    name = f"leases_{os.getpid()}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{server}/{name}"
    try:
        limits = Limits(tokens_per_day=150 * 2000, max_concurrent_requests=16, requests_per_minute=1_000_000)
        assert run_processes(url, limits) == 2000
        store = QuotaStore(url)
        assert sum(r["requests"] for r in store.totals(tenant=TENANT) if r["status"] == COMPLETED) == 2000
        store.close()
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
