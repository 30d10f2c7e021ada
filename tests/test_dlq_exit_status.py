"""`paystream dlq replay` exit statuses, as runbooks and cron jobs read them."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from paystream import cli as cli_module
from paystream import dlq
from paystream.settings import load_settings


def test_a_concurrent_replay_exits_4_from_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """README and cli.EXIT_CONCURRENT_REPLAY: a replay that notices another one's commit
    stops without committing and exits 4. ConcurrentReplayError is a PaystreamError,
    which `_run` turned into a ClickException (exit 1) before `dlq_replay` could see it."""

    async def concurrent(*args: Any, **kwargs: Any) -> None:
        raise dlq.ConcurrentReplayError("another `paystream dlq replay` committed")

    monkeypatch.setattr(cli_module, "_settings", load_settings)
    monkeypatch.setattr(dlq, "replay", concurrent)
    result = CliRunner().invoke(cli_module.cli, ["dlq", "replay"])
    assert result.exit_code == cli_module.EXIT_CONCURRENT_REPLAY, result.output
    assert "another `paystream dlq replay` committed" in result.output
