"""The `paystream` command: dev stack, worker, doctor, tenants, send, dlq, bench, migrate."""

from __future__ import annotations

from paystream.cli import demo, dev, dlq, docs, keys, send, serve, tenants
from paystream.cli.base import cli

__all__ = ["cli", "main"]

# (Each module registers its commands on ``cli`` when imported.)
_COMMAND_MODULES = (demo, dev, dlq, docs, keys, send, serve, tenants)


def _attach_subcommands() -> None:
    from paystream.ledger.cli import audit_group, erase_command, migrate_command

    cli.add_command(migrate_command)
    cli.add_command(audit_group)
    cli.add_command(erase_command)
    from paystream.simulator_cli import simulator_group

    cli.add_command(simulator_group)
    try:
        from paystream.bench.cli import bench_command
    except ImportError:  # pragma: no cover - the bench ships with the package
        return
    cli.add_command(bench_command)


_attach_subcommands()


def main() -> None:
    cli(prog_name="paystream")
