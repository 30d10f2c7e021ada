"""h78j F2: a worker that leaves by ``_exit_uncommitted`` (or the misconfigured-topics
exit) loses the counts its last minute held back: ``logging.shutdown(); os._exit(...)``
skips the atexit flush that e58ddc5 registers. That exit happens mid-outage (a batch
not delivered within the drain), exactly when the count is the line looked for."""

from __future__ import annotations

import subprocess
import sys

from paystream.agents.commands import EXIT_UNCOMMITTED


def test_a_worker_exiting_uncommitted_writes_the_counts_its_last_minute_held_back() -> None:
    code = (
        "import logging, sys\n"
        "logging.basicConfig(format='%(message)s')\n"
        "from paystream.log_limits import ThrottledLog, flush_at_exit\n"
        "flush_at_exit()  # (as worker.main does)\n"
        "log = ThrottledLog(logging.getLogger('t.exit'))\n"
        "for i in range(5):\n"
        "    log.warning('park', 'parking command %s', i)\n"
        "from paystream.agents.commands import _exit_uncommitted\n"
        "_exit_uncommitted('the batch in hand was not delivered within 30 s')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_UNCOMMITTED, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == "parking command 0", lines
    assert any(
        line.startswith("parking command 0 (and 4 more like it in the last ") for line in lines
    ), f"the last minute's count was lost on the uncommitted exit: {lines}"
