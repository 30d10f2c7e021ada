"""Run `paystream ingress` (the HTTP command ingress alone) as a child process, and know
when it is ready: its /readyz answers 200 (registry read, producer connected, brokers
answering)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from paystream.devstack._process import kill_process_group, parent_death_signal, wait_until

__all__ = ["NOT_FOR_THE_INGRESS", "IngressProcess"]

# What a worker's environment holds that the ingress never reads.
NOT_FOR_THE_INGRESS = frozenset(
    {
        "PAYSTREAM_MASTER_KEY",
        "PAYSTREAM_RETIRED_MASTER_KEYS",
        "DATABASE_URL",
        "PAYSTREAM_DB_APP_PASSWORD",
        "REDIS_URL",
        "PAYSTREAM_WEB_TOKEN",
    }
)


class IngressProcess:
    """`python -m paystream ingress` with the given environment, logging to a file."""

    def __init__(self, env: Mapping[str, str], log_path: Path, port: int) -> None:
        given = {**os.environ, **env, "PAYSTREAM_INGRESS_PORT": str(port)}
        # Least privilege, as the chart and compose file give it: the broker settings and
        # the platform token, none of the secrets a worker holds.
        self.env = {k: v for k, v in given.items() if k not in NOT_FOR_THE_INGRESS}
        self.log_path = log_path
        self.port = port
        host = self.env.get("PAYSTREAM_INGRESS_HOST") or "127.0.0.1"
        if host in ("0.0.0.0", "::"):  # bound everywhere: reached on loopback
            host = "127.0.0.1"
        self.host = f"[{host}]" if ":" in host else host
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> IngressProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "paystream", "ingress"],
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

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=3) as resp:  # noqa: S310 - 127.0.0.1
                return bool(resp.status == 200)
        except (OSError, urllib.error.HTTPError):
            return False

    def _died(self) -> str | None:
        if self.proc is not None and self.proc.poll() is not None:
            return f"ingress exited with {self.proc.returncode}; log: {self.log_path}"
        return None

    def wait_ready(self, timeout: float = 60) -> float:
        return wait_until(
            self.healthy, timeout=timeout, what="ingress", alive=self._died, interval=0.05
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None:
            kill_process_group(self.proc, term_timeout=20)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> IngressProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
