"""Alembic migrations of the ledger schema (run via ``paystream.ledger.migrate``)."""
