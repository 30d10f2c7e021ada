"""`paystream dev` says which embedded server died (review finding: a killed broker went
unnoticed, the worker logging errors by the thousand, `dev` exiting 0 at the end)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from paystream.devstack._process import ServiceProcess
from paystream.devstack.stack import DevStack
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
