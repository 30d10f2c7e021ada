"""A worker whose broker connections go silent carries on by itself, without a restart.

A broken network path leaves a connection open with nothing coming back: no answer, no
reset. Liveness does not judge that case (web/liveness.py: a consumer whose fetches go
unanswered sees no backlog), so the worker must mend it itself: aiokafka gives up on a
request after its timeout (PAYSTREAM_BROKER_REQUEST_TIMEOUT_SECONDS: 30 s on the
embedded broker), closes that connection and opens another; the group coordinator's
silence ends the worker's membership, and it joins again. Here every connection open
between the worker and its broker (fetches, heartbeats, produces) turns into a black
hole at once, behind a proxy the test owns (tests/e2e/blackhole.py), while new
connections get through.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.e2e.blackhole import BlackholeProxy
from tests.e2e.own_servers import json_page
from tests.e2e.proxied_stack import proxied_stack

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

TENANT = "blackholed-a"
COMMANDS = 5


async def test_a_worker_whose_broker_connections_go_silent_recovers_by_itself(
    deployment_factory: Any,
) -> None:
    # The commands' records go out on the producer's connection, silent too: it gives up
    # after its own request timeout (60 s by default), the consumers after theirs (30 s
    # on the embedded broker). 5 s and 8 s here keep the test short; what it shows,
    # recovery without a restart, is the same at any of them.
    env = {
        "PAYSTREAM_PRODUCER_REQUEST_TIMEOUT_SECONDS": "5",
        "PAYSTREAM_BROKER_REQUEST_TIMEOUT_SECONDS": "8",
    }
    async with proxied_stack(deployment_factory, BlackholeProxy, TENANT, **env) as stack:
        dep, proxy = stack.dep, stack.proxy
        with dep.worker() as worker:
            worker.wait_ready([TENANT], partitions=dep.settings.partitions)
            async with dep.client() as client:
                first = await client.command("customer.create", TENANT, {}, timeout=60)
                assert first.get_type() == "com.paystream.customer.created"
            assert worker.proc is not None
            pid, opened = worker.proc.pid, proxy.opened

            proxy.blackhole()
            started = time.monotonic()
            async with dep.client() as client:  # (its connections are new: they pass)
                outcomes = await asyncio.gather(
                    *(
                        client.command("customer.create", TENANT, {}, timeout=240)
                        for _ in range(COMMANDS)
                    )
                )
            took = time.monotonic() - started
            assert [o.get_type() for o in outcomes] == ["com.paystream.customer.created"] * 5
            # The same process all along, on new connections.
            assert not worker.exited() and worker.proc.pid == pid
            assert proxy.opened > opened
            status, body = await asyncio.to_thread(json_page, worker, "/healthz")
            assert status == 200 and body["ok"] is True, body
            print(f"commands answered {took:.0f} s after the connections went silent")
