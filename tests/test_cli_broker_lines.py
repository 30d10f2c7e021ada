"""The CLI holds back aiokafka's bootstrap refusals only to quote them in its one error
(review h60o): a broker lost mid-command is logged as it happens, and a dead broker
among live ones is still named once the command is done."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys

import pytest

from paystream.cli.base import _run


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_broker_lost_mid_command_is_still_logged(caplog: pytest.LogCaptureFixture) -> None:
    """aiokafka/client.py:435 logs this when a known broker (node) cannot be reached
    mid-run (a broker restarting during a long `dlq replay`): not a bootstrap refusal,
    and the command goes on; nothing else says so."""

    async def long_command() -> str:
        logging.getLogger("aiokafka").error(
            "Unable connect to node with id %s: %s", 2, "[Errno 111] Connect call failed"
        )
        return "done"

    with caplog.at_level(logging.ERROR):
        assert _run(long_command(), note_waiting=False) == "done"
    assert any("node with id 2" in r.getMessage() for r in caplog.records), caplog.text


def test_a_command_that_bootstraps_past_a_refusing_broker_says_one_refused(kafka_url: str) -> None:
    """KAFKA_BROKER_URL lists two brokers, the first down: the command succeeds, and the
    only word that one listed broker refused was aiokafka's line, now dropped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "PAYSTREAM_"))}
    dead = f"127.0.0.1:{_closed_port()}"
    env["KAFKA_BROKER_URL"] = f"kafka://{dead};{kafka_url.removeprefix('kafka://')}"
    said = ""
    # (aiokafka shuffles the bootstrap list: the dead one first, 1 in 2. Six runs missed
    # it 1 in 64, seen in a CI rehearsal: up to 20, until it was first.)
    for _ in range(20):
        proc = subprocess.run(
            [sys.executable, "-m", "paystream", "topics"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        said += proc.stderr
        if dead in said:
            break
    assert dead in said, f"stderr of 20 runs: {said!r}"
