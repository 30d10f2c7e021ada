"""Run the real `paystream` CLI as a subprocess and signal it at a chosen point (review h61d)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Any


class Cli:
    """``paystream *args`` in a subprocess; ``prelude`` (Python) runs first (to slow a
    dependency down); stdout and stderr gathered as they come."""

    def __init__(self, env: dict[str, str], *args: str, prelude: str = "") -> None:
        code = prelude + "\nfrom paystream.cli import main\nmain()\n"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.out, self.err = bytearray(), bytearray()
        self._threads = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _read(stream: Any, into: bytearray) -> None:
        while chunk := stream.read1(4096):
            into.extend(chunk)

    @property
    def text(self) -> str:
        return self.err.decode(errors="replace") + self.out.decode(errors="replace")

    def wait_for(self, marker: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while marker.encode() not in self.err + self.out:
            assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{self.text}"
            assert time.monotonic() < deadline, f"no {marker!r} in:\n{self.text}"
            time.sleep(0.02)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout: float = 60) -> int:
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for t in self._threads:
                t.join(timeout=10)
        return self.proc.returncode


def run(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "paystream", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
