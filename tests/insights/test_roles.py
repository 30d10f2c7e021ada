"""The insights share the outcomes consumer with the ledger sink: a worker running the
insights without the ledger, where there is a ledger, refuses to start."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("agents", "database", "refused"),
    [
        ("commands,insights", True, True),  # its outcomes would skip the ledger
        ("commands,ledger,insights", True, False),
        ("ledger,insights", True, False),
        ("commands,insights", False, False),  # no ledger anywhere
    ],
)
def test_insights_without_the_ledger_is_refused_where_there_is_a_ledger(
    agents: str, database: bool, refused: bool
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYSTREAM_")}
    env.pop("DATABASE_URL", None)
    env["PAYSTREAM_AGENTS"] = agents
    env["KAFKA_BROKER_URL"] = "kafka://127.0.0.1:9"
    if database:
        env["DATABASE_URL"] = "postgresql://app@127.0.0.1:9/paystream"
        env["PAYSTREAM_DB_APP_PASSWORD"] = "unused"
    proc = subprocess.run(
        [sys.executable, "-c", "import paystream.worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if refused:
        assert proc.returncode != 0
        assert "a worker running insights runs the ledger sink too" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
