"""CLI stops and messages (review h67f): a stop during `doctor`'s checks exits 130 (1 is a
failed check); `dev` blames no export line the shell does not have; doctor's Redis row
says why the registry could not be read; prompts still abort; no test leaks `dev`'s env."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
from unittest import mock

import click
import pytest
from aiokafka.errors import TopicAuthorizationFailedError
from click.testing import CliRunner

from paystream import doctor
from paystream.settings import Settings
from tests.cli_signals import Cli

# ---- doctor: stopped during its checks, still "Aborted!" and exit 1 -------------------

_MARK_CHECKS = """
import sys, paystream.doctor as d
_real = d.run_checks
async def _marked(*a, **k):
    sys.stderr.write("CHECKING\\n"); sys.stderr.flush()
    return await _real(*a, **k)
d.run_checks = _marked
"""


def _silent_broker() -> tuple[socket.socket, int]:
    """A port that takes connections and never answers (a wedged broker)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return srv, srv.getsockname()[1]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_doctor_stopped_during_its_checks_does_not_exit_the_failed_check_status(
    sig: int,
) -> None:
    """A stop exits 130 because exit 1 is what `doctor` gives a failed check; doctor itself
    turned a stop in its checks into click.Abort, exit 1 (review h67f)."""
    srv, port = _silent_broker()
    try:
        cli = Cli({"KAFKA_BROKER_URL": f"kafka://127.0.0.1:{port}"}, "doctor", prelude=_MARK_CHECKS)
        cli.wait_for("CHECKING")  # (in its checks: the silent broker holds the first)
        cli.signal(sig)
        status = cli.finish()
    finally:
        srv.close()
    assert status != 1, f"an interrupted doctor exits as a failed one:\n{cli.text}"
    assert status == 130, (status, cli.text)


# ---- dev: the embedded stack's own failure blamed on an export line --------------------


def test_dev_does_not_blame_an_export_line_that_this_shell_does_not_have(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """With none of KAFKA_BROKER_URL, DATABASE_URL, REDIS_URL set, `dev` starts its own
    servers: one of them not answering during the preparation (its PostgreSQL died, the
    embedded broker refused) is said as "a server  names does not answer: the export
    line of a `paystream dev` that has stopped? Run this from a shell without it"."""
    from paystream import devstack

    class _Stack:
        def __init__(self, *a, **k) -> None:
            pass

        def start(self) -> None:
            pass

        def stop(self) -> None:
            pass

        def died(self) -> None:
            return None

        def env(self) -> dict[str, str]:
            return {  # the embedded servers' addresses, none answering
                "KAFKA_BROKER_URL": "kafka://127.0.0.1:1",
                "DATABASE_URL": "postgresql+asyncpg://postgres:pw@127.0.0.1:1/paystream",
                "REDIS_URL": "redis://:pw@127.0.0.1:1/0",
                "PAYSTREAM_BROKER_FLAVOR": "tansu",
            }

    monkeypatch.setattr(devstack, "DevStack", _Stack)
    for name in ("KAFKA_BROKER_URL", "DATABASE_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PAYSTREAM_DATA_DIR", str(tmp_path))
    from paystream.cli import cli
    from paystream.devstack._process import free_port

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        args = ["dev", "--no-demo", "--duration", "1", "--web-port", str(free_port())]
        # (`dev` puts its settings in os.environ: not to be left for later tests.)
        with mock.patch.dict(os.environ):
            result = CliRunner().invoke(cli, [*args, "--ingress-port", str(free_port())])
    finally:
        for s, h in before.items():
            signal.signal(s, h)
    assert result.exit_code == 1, result.output
    assert "export line" not in result.output, result.output
    assert "a server  names" not in result.output, result.output


# ---- doctor's Redis row: any broker error is "broker unreachable", its cause dropped ---


def test_redis_row_does_not_call_a_refusing_broker_unreachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def refused(settings: Settings) -> list[str]:
        raise TopicAuthorizationFailedError("paystream.tenants")

    monkeypatch.setattr(doctor, "_simulator_tenants", refused)
    settings = Settings(kafka_broker_url="kafka://127.0.0.1:9092", redis_url=None)
    with pytest.raises(doctor.CheckFailed) as exc:
        asyncio.run(doctor.check_redis(settings))
    said = str(exc.value)
    assert "unreachable" not in said, said
    assert "TopicAuthorizationFailed" in said or "authoriz" in said.lower(), said


# ---- (checked, fine) Click prompts still answer Ctrl-C with Abort ------------------------


def test_ctrl_c_at_a_prompt_is_still_clicks_abort() -> None:
    from paystream.cli.base import cli as group

    @group.command("h67f-prompt")
    def _prompt() -> None:
        click.confirm("go on?", abort=True)

    try:
        import click.termui as termui

        real = termui.visible_prompt_func

        def interrupted(_: str) -> str:
            raise KeyboardInterrupt

        termui.visible_prompt_func = interrupted
        result = CliRunner().invoke(group, ["h67f-prompt"])
    finally:
        termui.visible_prompt_func = real
        group.commands.pop("h67f-prompt", None)
    assert result.exit_code == 1 and "Aborted!" in result.output, result.output


# ---- tests/test_dev_stale_exports.py leaves `dev`'s settings in this process ----------


def test_the_stale_exports_test_leaves_no_settings_behind() -> None:
    """`dev` puts PAYSTREAM_MASTER_KEY, PAYSTREAM_INGRESS_TOKEN, PAYSTREAM_AGENTS, ... in
    os.environ; run by CliRunner in the pytest process, they stay for every later test
    of that process (tests/test_dlq_exit_status.py's master-key test then fails)."""
    from tests import test_dev_stale_exports as h67a

    before = dict(os.environ)
    with pytest.MonkeyPatch.context() as mp:
        h67a.test_dev_with_dead_configured_servers_says_so_without_a_traceback(mp)
    leaked = sorted(k for k in os.environ if k not in before)
    for k in leaked:  # (this test's own clean-up)
        del os.environ[k]
    assert not leaked, leaked
