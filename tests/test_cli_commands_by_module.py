"""The `paystream` command finds each command in its module when it is run: importing
every command's module took about a second on each run, a worker's start included."""

from __future__ import annotations

import json
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


def test_send_help_lists_the_command_types_without_their_models() -> None:
    """`send --help` names every command type (review h77c: only the README's table or a
    mistyped type's error did), without building their models (~0.2 s)."""
    from click.testing import CliRunner

    from paystream.streams.commands import COMMANDS

    shown = CliRunner().invoke(cli, ["send", "--help"], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    types = shown.output.split("Command types:", 1)[1].split()
    assert [t.rstrip(",") for t in types] == sorted(COMMANDS)
    assert _loaded_by(["send", "--help"]) == []


def test_the_list_of_commands_loads_none_of_them() -> None:
    """`paystream --help` imported every command's module to ask each for its line
    (~1.5 s); the settings' pydantic too is left for a command that reads them."""
    assert _loaded_by(["--help"]) == []


def test_each_command_s_line_in_the_list_is_its_own() -> None:
    """The summaries `--help` lists stand in for the commands' own help, shortened by
    Click to any terminal's width as the commands' own help is."""
    ctx = click.Context(cli)
    assert set(cli.summaries) == set(cli.defined_in)
    for name, summary in cli.summaries.items():
        command = cli.get_command(ctx, name)
        assert command is not None and not command.hidden, name
        stand_in = click.Command(name, help=summary)
        for limit in range(10, 400):
            assert stand_in.get_short_help_str(limit) == command.get_short_help_str(limit), (
                name,
                limit,
            )


def _loaded_by(args: list[str]) -> list[str]:
    """The heavy modules a `paystream ARGS` run imports: any command's module but the one
    it runs, the command models, the settings, aiokafka, asyncio."""
    heavy = sorted(
        {module for module, _ in _CommandsByModule.defined_in.values()}
        - {f"paystream.cli.{args[0]}"}
        | {"paystream.streams.commands", "paystream.settings", "aiokafka", "asyncio"}
    )
    probe = (
        "import json, sys\n"
        "from paystream.cli import main\n"
        f"sys.argv = ['paystream', *{args!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]), file=sys.stderr)\n"
    )
    said = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert "Usage: paystream" in said.stdout, said
    loaded: list[str] = json.loads(said.stderr.splitlines()[-1])
    return loaded
