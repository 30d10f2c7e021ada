"""A provider key pasted where a gateway option goes (`--option sk_live_...`, or as an
option's name) was printed back in the usage error, on the operator's terminal and in
whatever CI or shell log captures it (review h67u). `--secret` and `--connected-account`
never repeat such a value; now neither does `--option`."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from paystream.cli import cli
from paystream.cli import tenants as tenants_cli

PASTED = "sk_live_51HpastedNotAnOption0123456789"


@pytest.mark.parametrize(
    "args",
    [
        ["--option", PASTED],  # no "=": refused before the broker is asked
        ["--gateway", "stripe", "--option", f"{PASTED}=1"],  # read as an option's name
        ["--option", f"{PASTED}=1"],  # (simulator)
    ],
)
def test_a_pasted_secret_given_as_an_option_is_not_repeated(
    args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tenants_cli, "_registered", lambda settings, tenant_id: None)

    def no_write(*a: Any, **k: Any) -> None:
        raise AssertionError("written")

    monkeypatch.setattr(tenants_cli, "_run", no_write)
    result = CliRunner().invoke(
        cli, ["tenants", "add", "acme", *args], env={"KAFKA_BROKER_URL": "kafka://127.0.0.1:9"}
    )
    assert result.exit_code == 2, result.output
    assert PASTED not in result.output
