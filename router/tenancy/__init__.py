"""Tenancy: API keys and limits (directory), prices (pricing), quota arithmetic (quota), the
shared quota state and usage ledger in one database (store), and the ingress's per-request
metering around them (gate)."""
