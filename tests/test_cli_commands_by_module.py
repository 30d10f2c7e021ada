"""The `paystream` command finds each command in its module when it is run: importing
every command's module took about a second on each run, a worker's start included."""

from __future__ import annotations

import subprocess
import sys

import click

from paystream.cli import cli
from paystream.cli.base import _CommandsByModule


def test_every_command_is_found_where_it_is_said_to_be() -> None:
    ctx = click.Context(cli)
    assert isinstance(cli, _CommandsByModule)
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name, name
    assert cli.get_command(ctx, "nonesuch") is None


def test_a_command_imports_its_own_module_alone() -> None:
    probe = (
        "import sys, click\n"
        "from paystream.cli import cli\n"
        "cli.get_command(click.Context(cli), 'tenants')\n"
        "print(sorted(m for m in ('paystream.cli.tenants', 'paystream.ledger.cli', "
        "'paystream.bench.cli', 'paystream.cli.demo', 'faust') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == "['paystream.cli.tenants']", out


def test_send_help_lists_the_command_types_read_only_for_the_help() -> None:
    """`send --help` names every command type (review h77c: only the README's table or a
    mistyped type's error did); the commands module (~0.2 s) is read for the help alone."""
    from click.testing import CliRunner

    from paystream.streams.commands import COMMANDS

    shown = CliRunner().invoke(cli, ["send", "--help"], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    types = shown.output.split("Command types:", 1)[1].split()
    assert [t.rstrip(",") for t in types] == sorted(COMMANDS)
    probe = (
        "import sys, click\n"
        "from paystream.cli import cli\n"
        "cli.get_command(click.Context(cli), 'send')\n"
        "print('paystream.streams.commands' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == "False", out
