"""A stop signal (Ctrl-C, SIGTERM) landing at the risky points of an embedded stack's
start: nothing it started runs on, untracked, writing into the directory that the stop
removes (`paystream doctor` left `paystream-doctor-*/postgres/data/...` behind: h72b)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from paystream.devstack.postgres import EmbeddedPostgres
from tests.fixtures.services import devstack_dir


@pytest.fixture
def base() -> Iterator[Path]:
    with devstack_dir() as path:
        yield path


def _running_with(env_value: bytes) -> list[psutil.Process]:
    """Processes (not zombies) whose environment holds ``env_value``."""
    found = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            with open(f"/proc/{proc.pid}/environ", "rb") as f:
                if env_value in f.read():
                    found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def _named_postgres(proc: psutil.Process) -> bool:
    """Whether a listed process is a PostgreSQL server (False once it has exited: initdb
    runs `postgres --boot`, then `postgres --single`; a CI run listed the first as it
    ended, and asking its name raised NoSuchProcess)."""
    try:
        return bool(proc.name() == "postgres")
    except psutil.NoSuchProcess:
        return False


def test_a_stop_during_initdb_leaves_none_of_its_servers_writing(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """initdb runs the server itself (`postgres --boot`, then `--single`). Interrupted,
    only initdb was killed (subprocess.run's SIGKILL): its server ran on, writing the
    cluster's files into a directory being removed, which was left behind."""
    root = base / "postgres"
    pgdata = f"PGDATA={root / 'data'}".encode()
    seen: list[psutil.Process] = []
    real = subprocess.Popen.communicate

    def interrupted(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> Any:
        if "initdb" not in str(self.args):
            return real(self, *args, **kwargs)
        deadline = time.monotonic() + 30
        server: list[psutil.Process] = []
        while not any(_named_postgres(p) for p in server):  # initdb's server started
            assert self.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
            server = _running_with(pgdata)
        for proc in server:
            # (held mid-write: it stays there until it is killed; `--boot` may have ended
            # since it was listed, `--single` coming next)
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.suspend()
        seen.extend(server)
        raise KeyboardInterrupt  # the stop signal, landing in the wait on initdb

    monkeypatch.setattr(subprocess.Popen, "communicate", interrupted)
    pg = EmbeddedPostgres(root)
    try:
        with pytest.raises(KeyboardInterrupt):
            pg.start()
        left = [p for p in seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert left == [], f"initdb's server still runs: {left}"
    finally:
        for proc in seen:  # (on the old code: let it go)
            with contextlib.suppress(psutil.Error):
                proc.kill()


def test_a_stop_while_a_server_is_spawned_is_not_raised_inside_popen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Raised inside subprocess.Popen (after the fork, before it returns), the server ran
    on with nobody holding its process: never stopped, writing into the directory being
    removed. There the stop is sent again a moment later, once the child is tracked."""
    from paystream.cli import base as cli_module

    monkeypatch.setattr(cli_module, "_STOP_REQUESTED", threading.Event())
    monkeypatch.setattr(cli_module, "_STOP_DELIVERED", threading.Event())

    class Signalled(subprocess.Popen[bytes]):
        def _execute_child(self, *args: Any) -> None:
            super()._execute_child(*args)  # forked: the child runs
            os.kill(os.getpid(), signal.SIGTERM)  # the stop lands here
            for _ in range(1000):  # (the handler runs at the next bytecodes)
                pass

    previous = signal.signal(signal.SIGTERM, cli_module._raise_interrupt)
    child: subprocess.Popen[bytes] | None = None
    try:
        try:
            child = Signalled([sys.executable, "-c", "import time; time.sleep(30)"])
            time.sleep(5)  # the stop, sent again, lands here
            pytest.fail("no stop")
        except KeyboardInterrupt:
            pass
        assert child is not None, "the stop was raised inside Popen: its child untracked"
    finally:
        signal.signal(signal.SIGTERM, previous)
        if child is not None:
            child.kill()
            child.wait()
        for proc in psutil.Process().children():
            if "time.sleep(30)" in " ".join(proc.cmdline()):
                proc.kill()
