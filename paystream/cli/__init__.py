"""The `paystream` command: dev stack, worker, doctor, tenants, send, dlq, bench, migrate.

Each command's module is imported when the command is run (base._CommandsByModule)."""

from __future__ import annotations

from paystream.cli.base import cli

__all__ = ["cli", "main"]


def main() -> None:
    cli(prog_name="paystream")
