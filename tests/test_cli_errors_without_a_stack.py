"""Error messages a new user meets when the stack `paystream dev` printed is not (or no
longer) where the shell thinks it is (review h60m): one error a problem, saying why."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from click.testing import CliRunner

from paystream.cli import cli


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_send_http_to_no_ingress_says_why_and_what_to_check() -> None:
    """README: `paystream send --http http://127.0.0.1:6070` (a stack on other ports, or
    none). The Kafka path says "no Kafka broker answered at ...: is it running, and is that
    its address?"; the HTTP path said only "(ClientConnectorError)"."""
    url = f"http://127.0.0.1:{_closed_port()}"
    result = CliRunner().invoke(
        cli,
        [
            "send",
            "payment.create",
            "--tenant",
            "acme",
            "--http",
            url,
            "--timeout",
            "3",
            "--data",
            '{"amount": 1999, "currency": "USD", "payment_method_token": "pm_card_visa"}',
        ],
        env={"PAYSTREAM_INGRESS_KEY": "psk_x", "KAFKA_BROKER_URL": None},
    )
    out = result.output
    assert "was not sent" in out, out
    assert "connection refused" in out.lower(), out
    assert "`paystream dev` prints its address" in out, out


def test_a_cli_command_with_no_broker_prints_one_error_not_aiokafkas_log_too() -> None:
    """Every CLI command run from a shell whose export line outlived its stack printed
    aiokafka's own log line ('Unable connect to "127.0.0.1:N": [Errno 111] ...') above
    paystream's clear "Error: no Kafka broker answered at ...": two errors for one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "PAYSTREAM_"))}
    env["KAFKA_BROKER_URL"] = f"kafka://127.0.0.1:{_closed_port()}"
    proc = subprocess.run(
        [sys.executable, "-m", "paystream", "tenants", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "no Kafka broker answered" in proc.stderr, proc.stderr
    # aiokafka's own line is not printed beside it: its words are in the one error.
    said = [line for line in proc.stderr.splitlines() if "Unable connect to" in line]
    assert len(said) == 1 and said[0].startswith("Error: no Kafka broker answered"), proc.stderr


def test_doctor_refuses_servers_set_to_nothing_rather_than_check_a_stack_of_its_own() -> None:
    """The export line of a `paystream dev` that has stopped sets the variables to ""
    (its files gone): doctor then checked a fresh embedded stack and passed everything,
    none of it about the stack meant (review h60m)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "PAYSTREAM_"))}
    env.update({"KAFKA_BROKER_URL": "", "DATABASE_URL": "", "REDIS_URL": ""})
    proc = subprocess.run(
        [sys.executable, "-m", "paystream", "doctor"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "KAFKA_BROKER_URL, DATABASE_URL, REDIS_URL set but empty" in proc.stderr
    assert "checking the embedded stack" not in proc.stdout


_UNDER_NOHUP = """
import asyncio
from paystream.cli.base import _stoppable
async def work():
    await asyncio.sleep(3)
    return 'finished'
print(asyncio.run(_stoppable(work())), flush=True)
"""


def test_a_command_run_under_nohup_is_not_stopped_by_the_hang_up() -> None:
    """SIGHUP stops the CLI as SIGTERM does (a lost SSH session), but not one started
    with it ignored, as `nohup` starts it (review h61e: the hang-up it guarded against
    stopped `dlq replay`, `migrate`, ...)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _UNDER_NOHUP],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),  # (as nohup does)
    )
    time.sleep(1.5)  # (imported, waiting in _stoppable)
    proc.send_signal(signal.SIGHUP)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "finished" in out, (proc.returncode, err[-300:])
