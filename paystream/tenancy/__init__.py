"""Tenants: registry records, configuration, sealed secrets and per-tenant gateways."""
