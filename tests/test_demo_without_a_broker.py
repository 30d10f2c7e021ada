"""`paystream demo` against a broker that does not answer printed a Python traceback
(review h66e), where `topics`, `tenants list` and `dlq list` say "no Kafka broker
answered at ... (KAFKA_BROKER_URL)" and exit 1: it ran its coroutine with asyncio.run,
not cli.base._run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_demo_without_a_broker_says_so_without_a_traceback() -> None:
    env = {**os.environ, "KAFKA_BROKER_URL": f"kafka://127.0.0.1:{_closed_port()}"}
    for name in ("DATABASE_URL", "REDIS_URL"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-m", "paystream", "demo", "--duration", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    said = done.stdout + done.stderr
    assert "Traceback" not in said, said
    assert done.returncode == 1 and "no Kafka broker answered" in said, said
