"""Changelog-backed tables, their records and state machines, and read views over them."""
