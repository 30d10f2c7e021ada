"""Process plumbing shared by the dev services: free ports, waiting, killing process groups."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import IO, Any, Self, TypeVar

from paystream.errors import PaystreamError

__all__ = [
    "ServiceError",
    "exit_described",
    "free_port",
    "kill_process_group",
    "listens_on",
    "log_size",
    "on_a_free_port",
    "parent_death_signal",
    "port_taken",
    "run_coroutine",
    "wait_until",
]

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1


class ServiceError(PaystreamError):
    """A development service could not be started or did not become healthy."""


# What a server logs when the port it was given is taken, matched in any case (Tansu,
# which then exits with status 0: "AddrInUse"; redis-server and PostgreSQL: "Address
# already in use"; an aiohttp server (a worker, the ingress, localstripe), which exits
# with status 1: "error while attempting to bind on address (...): address already in use").
_PORT_TAKEN_MARKS = (b"address already in use", b"addrinuse", b"address in use")
# Starts on a port of our choosing, each on a new one when the last was taken.
PORT_ATTEMPTS = 3


def listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a TCP socket listening on ``port`` (Linux's /proc;
    elsewhere, True: not checked)."""
    fd_dir = Path(f"/proc/{pid}/fd")
    if not Path("/proc/net/tcp").exists():
        return True
    inodes = set()
    try:
        fds = list(fd_dir.iterdir())
    except PermissionError:
        return True  # (its sockets cannot be listed here: not checked)
    except OSError:
        return False  # (gone: it exited)
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                # local address "HEX_IP:HEX_PORT", state 0A = LISTEN, inode
                if (
                    len(fields) > 9
                    and fields[3] == "0A"
                    and int(fields[1].rpartition(":")[2], 16) == port
                    and fields[9] in inodes
                ):
                    return True
    return False


def exit_described(code: int) -> str:
    """How a child ended, from its return code: a signal by name, as its log cannot say
    (a SIGKILLed worker's log just stops; "exited with -9" read as a status of its own)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


def log_size(path: Path) -> int:
    """How many bytes the log at ``path`` holds (0 when there is none yet)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def port_taken(path: Path, since: int) -> bool:
    """Whether the log at ``path``, past ``since`` bytes, says the server's port was taken."""
    try:
        with path.open("rb") as f:
            f.seek(since)
            written = f.read(1 << 20).lower()
    except OSError:
        return False
    return any(mark in written for mark in _PORT_TAKEN_MARKS)


def on_a_free_port(
    start_once: Callable[[], T],
    *,
    log_path: Path,
    take_port: Callable[[int], None],
    chosen: bool = True,
    errors: tuple[type[BaseException], ...] = (ServiceError,),
) -> T:
    """``start_once()``, again on a new port (given to ``take_port`` first) when it raised
    one of ``errors`` and the server logged to ``log_path`` that it could not bind the
    port it was given, if that one was ours to choose (``chosen``); at most
    ``PORT_ATTEMPTS`` starts.

    ``free_port`` only finds a port free when it looks: another process (a parallel
    test's server) may bind it before this server does, which then fails to start
    (a flaky CI run: Tansu exited with status 0 on "AddrInUse")."""
    for _ in range(PORT_ATTEMPTS - 1):
        logged = log_size(log_path)
        try:
            return start_once()
        except errors:
            if not chosen or not port_taken(log_path, logged):
                raise
        take_port(free_port())
    return start_once()  # (the last attempt: whatever it raises, raised)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it, so parallel runs don't clash)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.02,
    alive: Callable[[], str | None] | None = None,
) -> float:
    """Poll ``check`` until it returns True; returns the seconds it took.

    ``alive`` returns an error message once the process being waited on has died, so a
    crashed server fails fast instead of running out the clock.
    """
    started = time.monotonic()
    deadline = started + timeout
    while True:
        if alive is not None and (problem := alive()) is not None:
            raise ServiceError(f"{what}: {problem}")
        if check():
            return time.monotonic() - started
        if time.monotonic() >= deadline:
            raise ServiceError(f"{what}: not ready after {timeout:.0f} s")
        # Polling interval, not a test sleep: services come up in milliseconds to seconds.
        time.sleep(interval)
        interval = min(interval * 1.5, 0.25)


def parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child die with this process (Linux only).

    Only safe from the main thread: the kernel fires the signal when the *thread* that
    forked exits, so a child started from a short-lived thread would die with it.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def _set() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return _set


def kill_process_group(proc: subprocess.Popen[Any], *, term_timeout: float = 5.0) -> None:
    """SIGTERM the child's process group, SIGKILL it if it lingers, and reap the child."""
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=term_timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=term_timeout)
    # The leader may be gone while helpers it forked are not: sweep the group anyway,
    # and return once they are gone too. Killed, they still finish the write in hand: a
    # directory removed meanwhile (the stack's, on a stop) got their files again, and
    # was left behind (initdb's server, h72b).
    _signal_group(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + term_timeout
    while _group_running(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_running(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (a zombie does not: it writes
    nothing, and one orphaned may wait on an init that never reaps it)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    for stat in Path("/proc").glob("[0-9]*/stat"):  # (Linux; elsewhere: not waited on)
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def run_coroutine(factory: Callable[[], Coroutine[Any, Any, T]], timeout: float) -> T:
    """Run an async probe from sync code, even when the caller is inside an event loop.

    The probe gets a private loop in a worker thread, so ``DevStack.start()`` works from
    a sync fixture, a CLI command, or async code alike.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, factory()).result(timeout=timeout)


class ServiceProcess:
    """What every embedded server shares: its child process, its log file, its lifecycle.

    Subclasses set ``log_path`` and implement ``start()``; ``stop()`` kills the process
    group (servers with a gentler shutdown override it and call ``_close``).
    """

    log_path: Path
    _proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _died(self) -> str | None:
        if self._proc is not None and (code := self._proc.poll()) is not None:
            return f"{exit_described(code)}; see {self.log_path}"
        return None

    def _on_a_free_port(self, start_once: Callable[[], None], *, chosen: bool) -> None:
        """``start_once()``, again on a new port (``_take_port``) when the server could
        not bind the one it was given, if that one was ours to choose (``chosen``):
        :func:`on_a_free_port`."""
        on_a_free_port(start_once, log_path=self.log_path, take_port=self._take_port, chosen=chosen)

    def _take_port(self, port: int) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Kill the server's process group. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None:
            kill_process_group(proc)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
