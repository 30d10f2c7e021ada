"""Run a paystream worker as a child process and know when it is really ready.

"Ready" means more than the web port answering: the worker has been assigned its
partitions and has loaded the tenants it will be asked about, so commands sent next
are processed instead of waiting out a rebalance.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from paystream.devstack._process import listens_on, wait_until
from paystream.devstack.paystream_process import PaystreamProcess

__all__ = ["WorkerProcess"]


class WorkerProcess(PaystreamProcess):
    """`python -m paystream worker` with the given environment, logging to a file."""

    command = "worker"
    what = "worker"
    port_variable = "PAYSTREAM_WEB_PORT"

    def __init__(self, env: Mapping[str, str], log_path: Path, web_port: int | None = None) -> None:
        """On ``web_port``, or when None on a free port of our choosing (a new one should
        another process bind it first: ``web_port`` and ``base_url`` read after start)."""
        super().__init__({**os.environ, **env}, log_path, web_port)
        # Where it binds (review finding: a worker on ::1 or a LAN address was waited
        # for on 127.0.0.1, and `dev` gave up after two minutes), as the ingress's.
        host = self.env.get("PAYSTREAM_WEB_HOST") or "127.0.0.1"
        if host in ("0.0.0.0", "::"):  # bound everywhere: reached on loopback
            host = "127.0.0.1"
        self.host = f"[{host}]" if ":" in host else host

    @property
    def web_port(self) -> int:
        return self.port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.web_port}"

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

    def wait_ready(
        self, tenants: Iterable[str] = (), *, partitions: int | None = None, timeout: float = 90
    ) -> float:
        """Block until the worker owns (all ``partitions``, if given) and knows ``tenants``."""
        wanted = set(tenants)

        def ready() -> bool:
            # Its own answer: another worker that bound the port first answers too.
            if self.proc is None or not listens_on(self.proc.pid, self.web_port):
                return False
            stats = self.stats()
            if stats is None:
                return False
            owned = stats["worker"]["partitions"]
            if not owned or (partitions is not None and len(owned) < partitions):
                return False
            return wanted <= set(stats["tenants"])

        return wait_until(ready, timeout=timeout, what="worker", alive=self._died, interval=0.1)
