"""A `python -m paystream <command>` child in a process group of its own, logging to a
file: what the worker and ingress runners share (start, exit, signals, stop, and the web
port it serves on)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Self

from paystream.devstack._process import (
    ServiceError,
    exit_described,
    free_port,
    kill_process_group,
    listens_on,
    log_size,
    on_a_free_port,
    parent_death_signal,
    port_taken,
    wait_until,
)

__all__ = ["PaystreamProcess"]


class PaystreamProcess:
    """Subclasses set ``command`` (the CLI command), ``what`` (named when it died) and
    ``port_variable`` (the setting its port is given in).

    A port given is kept: taken, the process exits (its wait says so). Given none, it
    serves on a free port, and ``start()`` returns once it listens there: on a new port,
    should another process (a parallel test's server) have bound that one first, so
    ``port`` is read after the start."""

    command = ""
    what = "process"
    port_variable = ""
    # SIGTERM's grace before SIGKILL on stop().
    term_timeout = 15.0
    # How long start() waits for a port of our choosing to be bound (or found taken)
    # before leaving it to the caller's wait.
    bind_timeout = 60.0

    def __init__(self, env: dict[str, str], log_path: Path, port: int | None = None) -> None:
        self.port = free_port() if port is None else port
        self.port_chosen = port is None  # (ours to change if taken)
        self.env = {**env, self.port_variable: str(self.port)} if self.port_variable else env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._logged = 0  # (the log's size when the process was started)

    def start(self) -> Self:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self._log is not None:  # (started again: a restart after a kill)
            self._log.close()
        self._log = self.log_path.open("ab")
        if not self.port_chosen:
            self._spawn()
            return self
        try:
            # (Taken each time: as on a port given, the caller's wait says so.)
            with contextlib.suppress(ServiceError):
                on_a_free_port(self._start_bound, log_path=self.log_path, take_port=self._take_port)
        except BaseException:
            # Interrupted while waiting for the bind (a test's timeout, Ctrl-C): `with`
            # never reaches __exit__, so stop what was started here.
            if self.proc is not None:
                kill_process_group(self.proc, term_timeout=self.term_timeout)
            raise
        return self

    def _spawn(self) -> None:
        assert self._log is not None
        self._logged = log_size(self.log_path)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "paystream", self.command],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=parent_death_signal(),
        )

    def _start_bound(self) -> None:
        """Start it and wait until it listens on its port, exits, or says its port is
        taken (raised, after it is stopped: another start on a new port follows)."""
        self._spawn()
        proc = self.proc
        assert proc is not None

        def settled() -> bool:
            return (
                proc.poll() is not None
                or listens_on(proc.pid, self.port)
                or port_taken(self.log_path, self._logged)
            )

        try:
            wait_until(settled, timeout=self.bind_timeout, what=self.what, interval=0.05)
        except ServiceError:
            return  # (neither yet: its wait goes on, as for a port given)
        # (A worker still waiting for the brokers lives on, its probes unserved.)
        if not listens_on(proc.pid, self.port) and port_taken(self.log_path, self._logged):
            kill_process_group(proc, term_timeout=self.term_timeout)
            raise ServiceError(f"{self.what}: port {self.port} is taken")

    def _take_port(self, port: int) -> None:
        self.port = port
        if self.port_variable:
            self.env[self.port_variable] = str(port)

    def exited(self) -> bool:
        """Started, and no longer running."""
        return self.proc is not None and self.proc.poll() is not None

    def died(self) -> str | None:
        """Why it is no longer running (how it ended, and its log), or None."""
        return self._died()

    def _died(self) -> str | None:
        if self.proc is not None and self.proc.poll() is not None:
            taken = (
                f" (its port {self.port} is taken: another process listens on it)"
                if port_taken(self.log_path, self._logged)
                else ""
            )
            how = exit_described(self.proc.returncode)
            return f"{self.what} {how}{taken}; log: {self.log_path}"
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
