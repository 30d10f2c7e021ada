"""`paystream send` stopped by SIGTERM (`timeout 20 paystream send ...` in a script, a
job's deadline, a pod's stop) or SIGHUP (a lost SSH session) died without a word: the
command id, the only handle on a command that may have been sent, was never printed, and
the exit status was not the documented 130 (review h68i). With a random id, the only
retry left was a new command: a second charge."""

from __future__ import annotations

import signal
import socket
import threading

import pytest

from tests.cli_signals import Cli


def _silent_broker() -> tuple[socket.socket, int, threading.Event]:
    """A broker that takes connections and never answers (send waits on it); the event is
    set once one came."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    connected = threading.Event()

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            connected.set()

    threading.Thread(target=accept, daemon=True).start()
    return server, int(server.getsockname()[1]), connected


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_send_stopped_by_a_signal_names_the_command_id_and_exits_130(sig: int) -> None:
    server, port, connected = _silent_broker()
    try:
        cli = Cli(
            {"KAFKA_BROKER_URL": f"kafka://127.0.0.1:{port}"},
            "send",
            "payment.create",
            "--tenant",
            "acme",
            "--id",
            "order-h68i-1",
            "--data",
            '{"amount": 100, "currency": "USD", "payment_method_token": "pm_card_visa"}',
        )
        # Loaded, connected (its signal handlers set before), waiting on the broker.
        assert connected.wait(60), cli.text
        assert cli.proc.poll() is None, cli.text
        cli.signal(sig)
        status = cli.finish()
    finally:
        server.close()
    assert "--id order-h68i-1" in cli.text, f"exited {status} without naming the id:\n{cli.text}"
    assert status == 130, (status, cli.text)
