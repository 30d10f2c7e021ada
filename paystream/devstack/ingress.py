"""Run `paystream ingress` (the HTTP command ingress alone) as a child process, and know
when it is ready: its /readyz answers 200 (registry read, producer connected, brokers
answering)."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from paystream.devstack._process import listens_on, wait_until
from paystream.devstack.paystream_process import PaystreamProcess

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


class IngressProcess(PaystreamProcess):
    """`python -m paystream ingress` with the given environment, logging to a file."""

    command = "ingress"
    what = "ingress"
    port_variable = "PAYSTREAM_INGRESS_PORT"
    term_timeout = 20.0

    def __init__(self, env: Mapping[str, str], log_path: Path, port: int | None = None) -> None:
        """On ``port``, or when None on a free port of our choosing (a new one should
        another process bind it first: ``port`` and ``base_url`` read after start)."""
        given = {**os.environ, **env}
        # Least privilege, as the chart and compose file give it: the broker settings and
        # the platform token, none of the secrets a worker holds.
        super().__init__(
            {k: v for k, v in given.items() if k not in NOT_FOR_THE_INGRESS}, log_path, port
        )
        host = self.env.get("PAYSTREAM_INGRESS_HOST") or "127.0.0.1"
        if host in ("0.0.0.0", "::"):  # bound everywhere: reached on loopback
            host = "127.0.0.1"
        self.host = f"[{host}]" if ":" in host else host

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def healthy(self) -> bool:
        # Its own answer: another ingress that bound the port first answers /readyz too.
        if self.proc is None or not listens_on(self.proc.pid, self.port):
            return False
        try:
            with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=3) as resp:  # noqa: S310 - 127.0.0.1
                return bool(resp.status == 200)
        except (OSError, urllib.error.HTTPError):
            return False

    def wait_ready(self, timeout: float = 60) -> float:
        return wait_until(
            self.healthy, timeout=timeout, what="ingress", alive=self._died, interval=0.05
        )
