"""A replay whose printed time Redis did not take said "a replay naming it will need
--no-lease"; with Redis answering again, a replay naming it with --no-lease was refused
all the same, so the advice sent the operator to drop the replay lease for nothing
(review h68ae)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from paystream.cli import dlq as cli_dlq
from paystream.devstack.redis import EmbeddedRedis
from paystream.settings import load_settings


@pytest.fixture
def rd() -> Any:
    r = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="h68ae-")) / "redis")
    r.start()
    yield r
    r.stop()


def test_a_time_redis_did_not_take_is_accepted_with_no_lease_as_advised(
    rd: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings(redis_url=rd.url)
    started_ms = int(time.time() * 1000) - 1000
    as_of = cli_dlq._iso_ms(started_ms)

    rd.stop()  # Redis away as the run that held records back records its time
    cli_dlq._record_printed(settings, started_ms, "all")
    warning = capsys.readouterr().err
    assert "Redis" in warning, warning  # (said so)

    rd.start()  # back (same port, password; the embedded one keeps nothing)
    if "--no-lease" in warning:
        # What the warning advises must work: naming the time with --no-lease.
        cli_dlq._check_printed(settings, as_of, started_ms, redis_down_ok=True)
