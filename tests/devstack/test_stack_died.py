"""`paystream dev` says which embedded server died (review finding: a killed broker went
unnoticed, the worker logging errors by the thousand, `dev` exiting 0 at the end)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from paystream.devstack._process import ServiceProcess, free_port
from paystream.devstack.stack import DevStack
from paystream.devstack.worker import WorkerProcess
from paystream.settings import load_settings


def test_a_dead_server_of_the_stack_is_named_with_its_log(tmp_path: Path) -> None:
    stack = DevStack(tmp_path, load_settings())
    assert stack.died() is None  # nothing started: nothing died
    broker = ServiceProcess()
    broker.log_path = tmp_path / "tansu.log"
    broker._proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    broker._proc.wait()
    stack.broker = broker  # type: ignore[assignment]
    why = stack.died()
    assert why is not None and "broker" in why and "status 3" in why and "tansu.log" in why
    broker._proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    broker._proc.send_signal(signal.SIGKILL)
    broker._proc.wait()
    assert "embedded broker was killed by SIGKILL" in (stack.died() or "")


def test_a_killed_worker_is_said_to_be_killed_by_its_signal(tmp_path: Path) -> None:
    """Review h78d (failure drill): a worker SIGKILLed under `dev` was "worker exited; see
    worker.log", and its log, cut off mid-line, said nothing of why: `dev` names the
    signal (and, for an exit, its status)."""
    worker = WorkerProcess({}, tmp_path / "worker.log", web_port=free_port())
    assert worker.died() is None  # not started: nothing died
    worker.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    assert worker.died() is None  # running
    worker.proc.send_signal(signal.SIGKILL)
    worker.proc.wait()
    why = worker.died()
    assert why is not None and "worker was killed by SIGKILL" in why and "worker.log" in why
    worker.proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(70)"])
    worker.proc.wait()
    assert "worker exited with status 70" in (worker.died() or "")
