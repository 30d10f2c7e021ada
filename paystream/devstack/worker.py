"""Run a paystream worker as a child process and know when it is really ready.

"Ready" means more than the web port answering: the worker has been assigned its
partitions and has loaded the tenants it will be asked about, so commands sent next
are processed instead of waiting out a rebalance.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from paystream.devstack._process import (
    kill_process_group,
    parent_death_signal,
    wait_until,
)

__all__ = ["WorkerProcess"]


class WorkerProcess:
    """`python -m paystream worker` with the given environment, logging to a file."""

    def __init__(self, env: Mapping[str, str], log_path: Path, web_port: int) -> None:
        self.env = {**os.environ, **env, "PAYSTREAM_WEB_PORT": str(web_port)}
        self.log_path = log_path
        self.web_port = web_port
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "paystream", "worker"],
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

    def open(self, path: str, timeout: float) -> Any:
        """GET one of the worker's pages, with its web token when it has one."""
        request = urllib.request.Request(f"{self.base_url}{path}")  # noqa: S310 - http://127.0.0.1
        if token := self.env.get("PAYSTREAM_WEB_TOKEN"):
            request.add_header("Authorization", f"Bearer {token}")
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310

    def stats(self) -> dict[str, Any] | None:
        try:
            with self.open("/v1/stats", timeout=1) as resp:
                return dict(json.load(resp))
        except (OSError, ValueError):
            return None

    def _died(self) -> str | None:
        if self.proc is not None and self.proc.poll() is not None:
            return f"worker exited with {self.proc.returncode}; log: {self.log_path}"
        return None

    def wait_ready(
        self, tenants: Iterable[str] = (), *, partitions: int | None = None, timeout: float = 90
    ) -> float:
        """Block until the worker owns (all ``partitions``, if given) and knows ``tenants``."""
        wanted = set(tenants)

        def ready() -> bool:
            stats = self.stats()
            if stats is None:
                return False
            owned = stats["worker"]["partitions"]
            if not owned or (partitions is not None and len(owned) < partitions):
                return False
            return wanted <= set(stats["tenants"])

        return wait_until(ready, timeout=timeout, what="worker", alive=self._died, interval=0.1)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the worker's process group (SIGKILL simulates a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None:
            kill_process_group(self.proc, term_timeout=15)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
