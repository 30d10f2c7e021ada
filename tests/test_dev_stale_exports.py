"""`scripts/dev` run from a shell holding the export line of a stopped `paystream dev`
(its servers gone, their URLs still set) printed "starting embedded stack", started none
of them, then died with a traceback (review h67a). It says in a line which settings name
a server that does not answer."""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from click.testing import CliRunner

from paystream.cli import cli
from paystream.devstack._process import free_port

_STALE = {
    # What the export line of a stopped `paystream dev` leaves in a shell: its servers' URLs.
    "KAFKA_BROKER_URL": "kafka://127.0.0.1:1",
    "DATABASE_URL": "postgresql+asyncpg://postgres:pw@127.0.0.1:1/paystream",
    "REDIS_URL": "redis://:pw@127.0.0.1:1/0",
    "PAYSTREAM_BROKER_FLAVOR": "tansu",
}


def test_dev_with_dead_configured_servers_says_so_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="h67a-dev-"))
    for name, value in _STALE.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PAYSTREAM_DATA_DIR", str(data_dir))
    args = ["dev", "--no-demo", "--duration", "1"]
    args += ["--web-port", str(free_port()), "--ingress-port", str(free_port())]
    # (`dev` leaves SIGINT and SIGTERM ignored as it ends: put this process's back, or
    # the subprocesses of later tests inherit them ignored.)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        # (`dev` puts its settings in os.environ: a master key, a token, ... left for
        # every later test of this process.)
        with mock.patch.dict(os.environ):
            result = CliRunner().invoke(cli, args)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    # A ClickException (exit 1, one line), not an exception escaping the command.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1
    assert "DATABASE_URL" in result.output or "KAFKA_BROKER_URL" in result.output, result.output
