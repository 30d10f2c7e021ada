"""A complete run whose read-to positions Redis did not take printed a note that its time
"is refused", then the usual advice to replay with --include-stale-as-of <that time>: an
operator who followed it was refused (review h67m). It now says to run again."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from paystream import dlq
from paystream.cli import dlq as cli_module
from tests.test_dlq_exit_status import _commands_topic_of_its_own


def test_a_run_whose_positions_redis_did_not_take_does_not_advise_its_time(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    async def holding(*args: Any, **kwargs: Any) -> dlq.ReplayResult:
        return dlq.ReplayResult(
            stale=1, started_ms=1_796_000_000_123, complete=True, read_to_kept=False
        )

    settings = _commands_topic_of_its_own(redis_url)
    monkeypatch.setattr(cli_module, "_settings", lambda: settings)
    monkeypatch.setattr(dlq, "replay", holding)
    held = CliRunner().invoke(cli_module.cli, ["dlq", "replay"])
    assert held.exit_code == cli_module.EXIT_HELD_BACK, held.output
    assert "is refused" in held.output  # the new note
    # Following the advice printed right after it:
    advised = "--include-stale-as-of " in held.output
    if advised:
        when = held.output.split("--include-stale-as-of ")[1].split()[0]
        again = CliRunner().invoke(cli_module.cli, ["dlq", "replay", "--include-stale-as-of", when])
        assert again.exit_code == 0, (
            f"the run advised `--include-stale-as-of {when}`, which is refused:\n"
            f"{held.output}\n---\n{again.output}"
        )
