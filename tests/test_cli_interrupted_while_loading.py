"""A stop signal while `paystream` loads the command's module (review h66e): loaded
inside Click's main (for `audit`: paystream.ledger.cli, with alembic and SQLAlchemy,
about half a second), a Ctrl-C there was "Aborted!" and exit 1, which from `audit
verify` means "a row is missing or altered" (run_db turns an interrupt into exit 130 for
that reason: review h61d)."""

from __future__ import annotations

import signal

from tests.cli_signals import Cli

# Make the load of the command's module last long enough to be signalled in it.
_SLOW_LOAD = """
import sys, time, importlib.abc
class _SlowLoad(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "paystream.ledger.cli":
            sys.stderr.write("LOADING\\n"); sys.stderr.flush(); time.sleep(5)
        return None
sys.meta_path.insert(0, _SlowLoad())
"""


def test_ctrl_c_while_audit_verify_loads_does_not_exit_1_the_tampering_status() -> None:
    cli = Cli({}, "audit", "verify", "--tenant", "acme", prelude=_SLOW_LOAD)
    cli.wait_for("LOADING")
    cli.signal(signal.SIGINT)
    status = cli.finish()
    assert status != 1, f"an interrupted `audit verify` read as tampering:\n{cli.text}"
    assert status in (130, -signal.SIGINT), (status, cli.text)


# Make the load of the client's module (imported in send's body) last long enough to
# be signalled in it.
_SLOW_CLIENT = """
import sys, time, importlib.abc
class _SlowLoad(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "paystream.client":
            sys.stderr.write("LOADING\\n"); sys.stderr.flush(); time.sleep(5)
        return None
sys.meta_path.insert(0, _SlowLoad())
"""


def test_ctrl_c_while_send_prepares_exits_130_not_the_broker_down_status() -> None:
    """Inside a command's body (`send` imports its client there), Ctrl-C was Click's
    "Aborted!" and exit 1, which `send` gives a broker down (review h67a)."""
    cli = Cli(
        {"KAFKA_BROKER_URL": "kafka://127.0.0.1:1"},
        "send",
        "payment.create",
        "--tenant",
        "acme",
        "--data",
        '{"amount": 100, "currency": "USD", "payment_method_token": "pm_card_visa"}',
        prelude=_SLOW_CLIENT,
    )
    cli.wait_for("LOADING")
    cli.signal(signal.SIGINT)
    status = cli.finish()
    assert status == 130, f"interrupted `send` exited {status}:\n{cli.text}"
    assert "Aborted!" not in cli.text, cli.text
