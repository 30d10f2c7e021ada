"""A broker refusing the worker's writes with an error aiokafka marks not retriable
(TOPIC_AUTHORIZATION_FAILED: the outcomes topic's ACL missing for a while) is waited out
as NOT_ENOUGH_REPLICAS is (test_refused_writes.py), not an exit of the worker: exited
(70), its partitions went to the next worker, which met the same refusal and exited in
turn, each exit a rebalance of the whole group (review h69b)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.e2e.own_servers import json_page
from tests.e2e.test_refused_writes import _until, refusing_stack

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

TENANT = "refused-acl"
TOPIC_AUTHORIZATION_FAILED = 29


async def test_a_topic_authorization_refusal_is_waited_out_with_the_worker_up(
    deployment_factory: Any,
) -> None:
    async with refusing_stack(deployment_factory, TENANT) as stack:
        dep, proxy = stack.dep, stack.proxy
        with dep.worker() as worker:
            worker.wait_ready([TENANT], partitions=dep.settings.partitions)
            assert worker.proc is not None
            pid = worker.proc.pid
            charge = {"amount": 700, "currency": "USD", "payment_method_token": "pm_card_visa"}
            async with dep.client() as client:
                proxy.refuse(dep.settings.events_topic, TOPIC_AUTHORIZATION_FAILED)
                answer = asyncio.ensure_future(
                    client.command("payment.create", TENANT, charge, timeout=240)
                )
                await _until("the broker refused a produce", lambda: proxy.refusals > 0, 60)

                def reported() -> bool:
                    # (Before: the worker exited within a second of the first refusal.)
                    assert not worker.exited(), "a refused write ended the worker"
                    _status, body = json_page(worker, "/readyz")
                    return "TopicAuthorizationFailedError" in (body.get("publish_failing") or "")

                # Retried with the worker up, and said so: a second refusal seen too.
                await _until("/readyz reports the refusal", reported, 60)
                await _until("a retry refused", lambda: proxy.refusals > 1, 60)
                assert not worker.exited(), "a refused write ended the worker"
                proxy.refuse(None)
                outcome = await answer
            assert outcome.get_type() == "com.paystream.payment.succeeded"
            assert not worker.exited() and worker.proc.pid == pid
