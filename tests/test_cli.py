"""The `paystream` CLI as an operator uses it, against a real worker on the real broker."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import pytest
import pytest_asyncio

from paystream.client import PaystreamClient, build_command
from tests.fixtures.pipeline import Deployment

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

T = TypeVar("T")


def run_cli(
    dep: Deployment, *args: str, check: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "paystream", *args],
        env={**os.environ, **dep.env, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"paystream {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def at_once(*calls: Callable[[], T]) -> list[T]:
    """Each call's result, the calls made at the same time (each in a thread): for
    invocations that do not depend on each other, most of whose time is a new
    interpreter's start and imports."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return [done.result() for done in [pool.submit(call) for call in calls]]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def deployed(deployment_factory: Any) -> AsyncIterator[Deployment]:
    dep: Deployment = await deployment_factory()
    worker = dep.worker()
    try:
        at_once(
            worker.start,
            lambda: run_cli(dep, "tenants", "add", "acme", "--name", "Acme Corp"),
            # a tenant whose provider is down for the first 100 attempts of every key
            lambda: run_cli(dep, "tenants", "add", "flaky", "--option", 'fail_first={"*": 100}'),
        )
        worker.wait_ready(["acme", "flaky"], partitions=dep.settings.partitions)
        dep.worker_handle = worker  # type: ignore[attr-defined]
        yield dep
    finally:
        worker.stop()


async def test_tenants_list_and_suspend(deployed: Deployment) -> None:
    listed = [json.loads(line) for line in run_cli(deployed, "tenants", "list").stdout.splitlines()]
    by_id = {t["tenant_id"]: t for t in listed}
    assert by_id["acme"]["name"] == "Acme Corp" and by_id["acme"]["status"] == "active"
    run_cli(deployed, "tenants", "suspend", "acme")
    deployed.worker_handle.wait_ready(["acme"])  # type: ignore[attr-defined]
    send = partial(run_cli, deployed, "send", "customer.create", "--data", "{}")
    # (At once: the sends, and the rename, which keeps the suspension the send meets.)
    suspended, misnamed, renamed = at_once(
        partial(send, "--tenant", "acme"),
        partial(send, "--tenant", "acmee"),
        partial(run_cli, deployed, "tenants", "add", "acme", "--name", "Acme Inc"),
    )
    assert json.loads(suspended.stdout)["data"]["reason"] == "tenant_suspended"
    # Said on stderr too (exit 0: an outcome came), with where to look.
    assert "rejected: tenant_suspended:" in suspended.stderr, suspended.stderr
    assert "`paystream tenants list`" in suspended.stderr
    # A mistyped tenant: the same, pointing at the tenants it could have meant.
    assert json.loads(misnamed.stdout)["data"]["reason"] == "unknown_tenant"
    assert "rejected: unknown_tenant: unknown tenant 'acmee'" in misnamed.stderr, misnamed.stderr
    assert "`paystream tenants add`" in misnamed.stderr
    # Re-running a registration to rename it must not re-activate it.
    assert json.loads(renamed.stdout)["status"] == "suspended", renamed.stdout
    assert "updated acme (status suspended)" in renamed.stderr
    # Refused, each, before anything is written (so, at once, beside the activation):
    # options the gateway would refuse, refused when written, not at the first payment;
    # a tenant id, name or key label that reads as a card number, nor repeated; an
    # unknown tenant; a registry topic that does not exist, not created by the broker's
    # defaults (not compacted), nor a mistyped one taken for it (review finding).
    carded_args = (
        ("add", "4242424242424242"),
        ("add", "acme", "--name", "Acme 4242 4242 4242 4242"),
        ("api-key", "create", "acme", "--label", "card 4242424242424242"),
    )
    refused = partial(run_cli, deployed, check=False)
    mistyped = f"{deployed.settings.app_id}.tenants-typo"
    _, typo, unknown, missing, *carded = at_once(
        partial(run_cli, deployed, "tenants", "activate", "acme"),
        partial(refused, "tenants", "add", "acme", "--option", "fail_rat=0.5"),
        partial(refused, "tenants", "suspend", "nobody"),
        partial(refused, "tenants", "add", "zeta", PAYSTREAM_TENANTS_TOPIC=mistyped),
        *(partial(refused, "tenants", *args) for args in carded_args),
    )
    assert typo.returncode == 2 and "fail_rat" in typo.stderr
    # (Not written: re-registered without options, it has none.)
    assert json.loads(run_cli(deployed, "tenants", "add", "acme").stdout)["gateway_options"] == {}
    for args, said in zip(carded_args, carded, strict=True):
        assert said.returncode == 2 and "reads as a card number" in said.stderr, (args, said)
        assert "4242" not in said.stderr, args
    assert unknown.returncode != 0 and "unknown tenant" in unknown.stderr
    assert missing.returncode != 0 and "does not exist" in missing.stderr, missing.stderr
    assert "paystream topics" in missing.stderr


async def test_send_prints_the_outcome(deployed: Deployment) -> None:
    for _ in range(50):  # the activation above reaches the worker's table shortly
        proc = run_cli(
            deployed,
            "send",
            "payment.create",
            "--tenant",
            "acme",
            "--data",
            '{"amount": 1999, "currency": "USD", "payment_method_token": "pm_card_visa"}',
        )
        out = json.loads(proc.stdout)
        if out["data"].get("reason") != "tenant_suspended":
            break
    assert out["type"] == "com.paystream.payment.succeeded"
    assert "rejected" not in proc.stderr, proc.stderr
    assert out["data"]["object"]["amount"] == 1999


async def test_send_whose_stdout_is_gone_names_the_id_and_exits_74(deployed: Deployment) -> None:
    """A pipe whose reader left (`paystream send ... | head -c0`), or stdout closed
    (`>&-`): the outcome was lost with a traceback (or silently, exit 0), and with a
    random id nothing said which command was answered."""
    run_cli(deployed, "tenants", "add", "piped")
    deployed.worker_handle.wait_ready(["piped"])  # type: ignore[attr-defined]
    args = [sys.executable, "-m", "paystream", "send", "customer.create", "--tenant", "piped"]
    env = {**os.environ, **deployed.env}
    read_end, write_end = os.pipe()
    os.close(read_end)  # (its reader gone before the outcome is written)
    try:
        broken, closed = at_once(
            partial(
                subprocess.run, [*args, "--data", '{"customer_id": "c-pipe"}'],
                env=env, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
            ),
            partial(
                subprocess.run,
                ["sh", "-c", 'exec "$@" >&-', "sh", *args, "--data", '{"customer_id": "c-closed"}'],
                env=env, stderr=subprocess.PIPE, text=True, timeout=120,
            ),
        )  # fmt: skip
    finally:
        os.close(write_end)
    for done in (broken, closed):
        assert done.returncode == 74, done.stderr
        assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
        said = re.search(r"error: command (\S+) was answered", done.stderr)
        assert said, done.stderr
        assert f"send it again with --id {said.group(1)}" in done.stderr
        # (Answered: not parked, which the hint for no outcome adds; review h70e.)
        assert "may be parked" not in done.stderr


async def test_send_rejects_bad_json(deployed: Deployment) -> None:
    bad = run_cli(
        deployed, "send", "customer.create", "--tenant", "acme", "--data", "{nope", check=False
    )
    assert bad.returncode == 2 and "--data is not JSON" in bad.stderr


async def test_parked_commands_are_replayed_by_dlq_replay(deployed: Deployment) -> None:
    cmd = build_command(
        "payment.create",
        "flaky",
        {"amount": 500, "currency": "USD", "payment_method_token": "pm_card_visa"},
    )
    async with PaystreamClient(deployed.settings) as client:
        await client.publish(cmd)
        listed = ""
        for _ in range(100):
            listed = run_cli(deployed, "dlq", "list", "--topic", "retry").stdout
            if cmd.get_id() in listed:
                break
        assert cmd.get_id() in listed and "reason=provider_unavailable" in listed
        # the provider recovers; the operator re-drives the parked command
        run_cli(deployed, "tenants", "add", "flaky", "--clear-options")
        deployed.worker_handle.wait_ready(["flaky"])  # type: ignore[attr-defined]
        waiter = client.expect("flaky", cmd.get_id())
        replayed = run_cli(deployed, "dlq", "replay", "--topic", "retry", "--without-master-key")
        assert "replayed 1 record(s): provider_unavailable=1" in replayed.stdout
        outcome = await asyncio.wait_for(waiter, 30)
    assert outcome.get_type() == "com.paystream.payment.succeeded"
    assert (
        "replayed 0 record(s)"
        in run_cli(deployed, "dlq", "replay", "--topic", "retry", "--without-master-key").stdout
    )


@pytest.fixture(scope="module")
def doctors(deployed: Deployment) -> dict[str, subprocess.CompletedProcess[str]]:
    """`paystream doctor`'s runs, at once: on the deployment's servers, and without
    REDIS_URL (most of each is waiting on the broker: a group's join, fetches)."""
    without_redis = {k: v for k, v in {**os.environ, **deployed.env}.items() if k != "REDIS_URL"}
    given, no_redis = at_once(
        partial(run_cli, deployed, "doctor", check=False),
        partial(
            subprocess.run, [sys.executable, "-m", "paystream", "doctor"],
            env=without_redis, capture_output=True, text=True, timeout=120,
        ),
    )  # fmt: skip
    return {"given": given, "no_redis": no_redis}


async def test_doctor_prints_its_table_and_passes(
    doctors: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    proc = doctors["given"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    rows = [line for line in out.splitlines() if " PASS " in line or " FAIL " in line]
    assert len(rows) >= 8 and all(" PASS " in row for row in rows), out
    assert "end offsets after batch" in out and "caught-up fetch latency" in out


async def test_doctor_checks_the_configured_servers_when_redis_is_not_set(
    doctors: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    """A Stripe-only fleet sets no REDIS_URL: doctor still checks the broker and database
    it was given, the ledger's set-up among them, rather than an embedded stand-in (which
    passed an unmigrated ledger)."""
    proc = doctors["no_redis"]
    out = proc.stdout
    assert "checking the embedded stack" not in out
    assert "ledger ready" in out, out
    # This deployment's tenants are simulated: without Redis each would be answered
    # gateway_not_configured, and doctor says so (it passed with a note).
    redis_row = next(line for line in out.splitlines() if "redis answers" in line)
    assert " FAIL " in redis_row and "use the simulator gateway" in redis_row, out
    rows = [line for line in out.splitlines() if " PASS " in line or " FAIL " in line]
    assert [row for row in rows if " FAIL " in row] == [redis_row], out
    assert proc.returncode == 1, out + proc.stderr


def _send_payment(dep: Deployment, tenant: str, amount: int) -> dict[str, Any]:
    body = json.dumps({"amount": amount, "currency": "USD", "payment_method_token": "pm_card_visa"})
    out = run_cli(dep, "send", "payment.create", "--tenant", tenant, "--data", body).stdout
    return dict(json.loads(out))


async def test_tenant_limits_are_set_kept_enforced_and_cleared(deployed: Deployment) -> None:
    run_cli(deployed, "tenants", "add", "capped", "--max-payment", "usd=1000", "--rate-limit", "50")
    deployed.worker_handle.wait_ready(["capped"])  # type: ignore[attr-defined]
    shown_run, over, paid = at_once(
        partial(run_cli, deployed, "tenants", "limits", "capped"),
        partial(_send_payment, deployed, "capped", 1001),
        partial(_send_payment, deployed, "capped", 1000),
    )
    shown = json.loads(shown_run.stdout)
    assert shown["max_payment_amount"] == {"USD": 1000} and shown["commands_per_second"] == 50
    assert over["data"]["reason"] == "quota_exceeded", over
    assert over["data"]["limit"] == "max_payment_amount"
    assert paid["type"] == "com.paystream.payment.succeeded", paid
    # Updating the tenant without limit options keeps its limits, and its gateway options;
    # limit options on a registered tenant would replace all its limits: refused.
    _, refused = at_once(
        partial(run_cli, deployed, "tenants", "add", "capped", "--option", "latency_ms=0"),
        partial(run_cli, deployed, "tenants", "add", "capped", "--rate-limit", "9", check=False),
    )
    assert refused.returncode == 2 and "tenants limits" in refused.stderr
    updated = run_cli(deployed, "tenants", "add", "capped", "--name", "Capped Inc").stdout
    assert json.loads(updated)["gateway_options"] == {"latency_ms": 0}, updated
    kept = json.loads(run_cli(deployed, "tenants", "limits", "capped").stdout)
    assert kept == shown  # (kept by the updates; the refused one changed nothing)
    cleared = json.loads(run_cli(deployed, "tenants", "limits", "capped", "--clear").stdout)
    assert cleared["max_payment_amount"] == {} and cleared["commands_per_second"] is None
    for _ in range(50):  # the change reaches the worker's registry table shortly
        out = _send_payment(deployed, "capped", 5000)
        if out["data"].get("reason") != "quota_exceeded":
            break
    assert out["type"] == "com.paystream.payment.succeeded", out
    # (At once: the refusals are judged on the options given, not the limits held.)
    limits = partial(run_cli, deployed, "tenants", "limits", check=False)
    bad, only, alone, unknown = at_once(
        partial(limits, "capped", "--daily-volume", "USD"),
        partial(limits, "capped", "--max-payment", "USD=1000", "--only-listed-currencies"),
        partial(limits, "capped", "--only-listed-currencies"),
        partial(limits, "nobody"),
    )
    assert bad.returncode == 2 and "CURRENCY=MINOR_UNITS" in bad.stderr
    assert only.returncode == 0, only.stderr
    assert json.loads(only.stdout)["only_listed_currencies"] is True
    assert alone.returncode == 2 and "only_listed_currencies needs" in alone.stderr
    assert unknown.returncode != 0 and "unknown tenant" in unknown.stderr


async def test_a_rate_limited_tenant_gets_rate_limited_outcomes(deployed: Deployment) -> None:
    run_cli(deployed, "tenants", "add", "throttled", "--rate-limit", "1", "--burst", "2")
    deployed.worker_handle.wait_ready(["throttled"])  # type: ignore[attr-defined]
    commands = [build_command("customer.create", "throttled", {}) for _ in range(5)]
    async with PaystreamClient(deployed.settings) as client:
        waiters = [client.expect("throttled", c.get_id()) for c in commands]
        # All at once (well within a second): the bucket holds two.
        await asyncio.gather(*(client.publish(c) for c in commands))
        outcomes = await asyncio.wait_for(asyncio.gather(*waiters), 30)
    kinds = [o.get_type().removeprefix("com.paystream.") for o in outcomes]
    assert kinds.count("customer.created") == 2, kinds
    limited = [o.get_data() for o in outcomes if o.get_type().endswith("command.rejected")]
    assert len(limited) == 3
    assert all(d["reason"] == "rate_limited" and d["retry_after_ms"] > 0 for d in limited)  # type: ignore[index]


# Each case: the command, and the environment naming a topic that does not exist.
MISSING_TOPICS = {
    "dlq-list": (("dlq", "list"), {"PAYSTREAM_DLQ_TOPIC": "no.such.dlq"}),
    "dlq-replay": (("dlq", "replay", "--dry-run"), {"PAYSTREAM_RETRY_TOPIC": "no.such.retry"}),
    "tenants-list": (("tenants", "list"), {"PAYSTREAM_TENANTS_TOPIC": "no.such.tenants"}),
    "tenants-suspend": (
        ("tenants", "suspend", "acme"),
        {"PAYSTREAM_TENANTS_TOPIC": "no.such.tenants"},
    ),
}


@pytest.fixture(scope="module")
def missing_topic_runs(deployed: Deployment) -> dict[str, subprocess.CompletedProcess[str]]:
    """Each MISSING_TOPICS case run, all at once (each is a process's start, mostly)."""
    runs = at_once(
        *(
            partial(run_cli, deployed, *args, check=False, **env)
            for args, env in MISSING_TOPICS.values()
        )
    )
    return dict(zip(MISSING_TOPICS, runs, strict=True))


@pytest.mark.parametrize("case", list(MISSING_TOPICS))
async def test_a_topic_that_does_not_exist_is_said_not_read_as_empty(
    missing_topic_runs: dict[str, subprocess.CompletedProcess[str]], case: str
) -> None:
    """A shell pointed at another environment, or a mistyped topic, said "0 record(s)
    waiting" or listed no tenant, and exited 0 (review finding)."""
    _, env = MISSING_TOPICS[case]
    proc = missing_topic_runs[case]
    assert proc.returncode != 0, proc.stdout
    assert "does not exist" in proc.stderr and next(iter(env.values())) in proc.stderr


def _sent(dep: Deployment, command_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """`paystream send`'s outcome (sent again while a test above has acme suspended)."""
    for _ in range(50):
        args = ("send", command_type, "--tenant", "acme", "--data", json.dumps(data))
        out: dict[str, Any] = json.loads(run_cli(dep, *args).stdout)
        if out["data"].get("reason") != "tenant_suspended":
            break
    return out


async def test_a_customer_takes_the_3ds_step_at_the_simulator_from_the_shell(
    deployed: Deployment,
) -> None:
    """README: create, the customer's step (`paystream simulator authenticate`), then
    `payment.refresh`; passed on one payment, failed (`--fail`) on another."""
    card = {"amount": 1500, "currency": "EUR",
            "payment_method_token": "pm_card_authenticationRequired"}  # fmt: skip

    def the_customer_step(pid: str, extra: tuple[str, ...], status: str, after: str) -> None:
        created = _sent(deployed, "payment.create", {**card, "payment_id": pid})
        assert created["type"] == "com.paystream.payment.requires_action", created
        provider_id = created["data"]["object"]["provider_payment_id"]
        step = run_cli(deployed, "simulator", "authenticate", "acme", provider_id, *extra)
        assert json.loads(step.stdout)["status"] == status, pid
        read = _sent(deployed, "payment.refresh", {"payment_id": pid})
        assert read["type"] == f"com.paystream.{after}", read
        assert read["data"]["previous_status"] == "requires_action", pid
        # Taken again (a customer's double click): the same answer, nothing changes.
        again = run_cli(deployed, "simulator", "authenticate", "acme", provider_id, *extra)
        assert again.stdout == step.stdout, pid
        # The other way after it: the step is over.
        other = () if extra else ("--fail",)
        late = run_cli(deployed, "simulator", "authenticate", "acme", provider_id, *other,
                       check=False)  # fmt: skip
        said = f"came after one the other way for {provider_id}, whose answer stands"
        assert late.returncode == 1 and said in late.stderr, (pid, late.stderr)
        assert f"(the payment is {status}" in late.stderr, pid

    # The two payments' steps at once (each a run of commands that wait on each other).
    at_once(
        partial(the_customer_step, "pay_cli_3ds_ok", (), "succeeded", "payment.succeeded"),
        partial(the_customer_step, "pay_cli_3ds_no", ("--fail",), "failed", "payment.failed"),
    )


async def test_simulator_authenticate_after_a_refusal_the_other_way(deployed: Deployment) -> None:
    """The simulator keeps its first answer to a payment's step, a refusal too: asked the
    other way after it, the command says so with the payment as it is, not "taken"."""
    card = {"amount": 1500, "currency": "EUR", "payment_method_token": "pm_card_visa"}
    paid = _sent(deployed, "payment.create", {**card, "payment_id": "pay_cli_no_3ds"})
    provider_id = paid["data"]["object"]["provider_payment_id"]
    refused = run_cli(deployed, "simulator", "authenticate", "acme", provider_id, "--fail",
                      check=False)  # fmt: skip
    assert refused.returncode == 1 and "not requires_action" in refused.stderr, refused.stderr
    after = run_cli(deployed, "simulator", "authenticate", "acme", provider_id, check=False)
    assert after.returncode == 1, after.stdout
    assert "whose answer stands (the payment is succeeded)" in after.stderr, after.stderr


# `simulator authenticate` refused: its arguments, and what it says.
NOT_FOUND = [
    (("acme", "pi_missing"), "the simulator has no payment 'pi_missing' for tenant acme"),
    # paystream's own id, the likely mistake: the error says which id to give.
    (("acme", "pay_nope"), "give the payment's provider_payment_id"),
    (("nobody", "pi_missing"), "unknown tenant 'nobody'"),
]


@pytest.fixture(scope="module")
def authenticate_refusals(
    deployed: Deployment,
) -> dict[tuple[str, ...], subprocess.CompletedProcess[str]]:
    """`simulator authenticate` run for each NOT_FOUND case, and with Redis down (its
    arguments ("redis down",)), all at once."""
    step = partial(run_cli, deployed, "simulator", "authenticate", check=False)
    *not_found, redis_down = at_once(
        *(partial(step, *args) for args, _ in NOT_FOUND),
        partial(step, "acme", "pi_x", REDIS_URL="redis://127.0.0.1:1"),
    )
    return {
        **{args: proc for (args, _), proc in zip(NOT_FOUND, not_found, strict=True)},
        ("redis down",): redis_down,
    }


@pytest.mark.parametrize(("args", "said"), NOT_FOUND)
async def test_simulator_authenticate_refuses_what_it_cannot_find(
    authenticate_refusals: dict[tuple[str, ...], subprocess.CompletedProcess[str]],
    args: tuple[str, str],
    said: str,
) -> None:
    proc = authenticate_refusals[args]
    assert proc.returncode == 1 and said in proc.stderr, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr


async def test_simulator_authenticate_says_when_redis_is_down(
    authenticate_refusals: dict[tuple[str, ...], subprocess.CompletedProcess[str]],
) -> None:
    proc = authenticate_refusals[("redis down",)]
    assert proc.returncode == 1 and "the simulator's Redis" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
