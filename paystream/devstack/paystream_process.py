"""A `python -m paystream <command>` child in a process group of its own, logging to a
file: what the worker and ingress runners share (start, exit, signals, stop)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Self

from paystream.devstack._process import kill_process_group, parent_death_signal

__all__ = ["PaystreamProcess"]


class PaystreamProcess:
    """Subclasses set ``command`` (the CLI command) and ``what`` (named when it died)."""

    command = ""
    what = "process"
    # SIGTERM's grace before SIGKILL on stop().
    term_timeout = 15.0

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> Self:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "paystream", self.command],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=parent_death_signal(),
        )
        return self

    def exited(self) -> bool:
        """Started, and no longer running."""
        return self.proc is not None and self.proc.poll() is not None

    def _died(self) -> str | None:
        if self.proc is not None and self.proc.poll() is not None:
            return f"{self.what} exited with {self.proc.returncode}; log: {self.log_path}"
        return None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the process group (SIGKILL simulates a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None:
            kill_process_group(self.proc, term_timeout=self.term_timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
