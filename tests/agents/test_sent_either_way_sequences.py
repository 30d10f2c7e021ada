"""Every create a let-through re-drive may send again the other ways (payments, invoices,
transfers, refunds with and without an amount): the requests sent, in order, under
which key, and which refusal stands when every way is refused. Pinned as the release
before the fold of _refund_at_provider into _sent_either_way (0c7c437) sent them
(review h82rd of 9780819a: "same requests in the same order, the last refusal raised").

The simulator compares parameters sent again under a key as Stripe does; the request
the key holds is put there directly (the first attempt, its answer lost), as by the
release before (plain metadata, a refund of the rest naming the amount left), by this
one with or without `webhooks`, or another request altogether (refused every way).
invoice.finalize and invoice.pay carry no metadata: one way, sent once under its key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from paystream.agents import handlers
from paystream.gateways import base as gw
from paystream.gateways.base import Capability
from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.tenancy.models import Tenant
from tests.agents.harness import Harness, data, kind, new_tenant_id, outcome_of
from tests.agents.test_applied_by_entity import _transferring
from tests.agents.test_let_through import _answer, _command

pytestmark = pytest.mark.asyncio

_META = {"order": "o-1"}
_CHARGE = {"payment_id": "p1", "amount": 2000, "currency": "USD",
           "payment_method_token": "pm_card_visa", "metadata": _META}  # fmt: skip


class _Recorder:
    """Wraps one gateway operation: each request's (amount, metadata, key), and each
    refusal numbered in its message (#n: the n-th request) to tell which one stands."""

    def __init__(self, gateway: Any, operation: str) -> None:
        self.sent: list[tuple[int | None, dict[str, str], str]] = []
        self._call: Callable[..., Awaitable[Any]] = getattr(gateway, operation)
        setattr(gateway, operation, self._recorded)

    async def _recorded(self, req: Any, *, idempotency_key: str) -> Any:
        self.sent.append((_amount(req), dict(req.metadata), idempotency_key))
        try:
            return await self._call(req, idempotency_key=idempotency_key)
        except GatewayError as exc:
            exc.message = f"{exc.message} #{len(self.sent)}"
            exc.args = (f"{exc.args[0]} #{len(self.sent)}",)
            raise


def _amount(req: Any) -> int | None:
    amount = getattr(req, "amount", None)  # (an invoice's: its lines')
    return amount if amount is None or isinstance(amount, int) else int(amount.amount)


def _gateway(h: Harness, t: str) -> Any:
    return h.pool.get(Tenant.model_validate(h.tenants[t]))


async def _payment(h: Harness, t: str) -> tuple[str, dict[str, Any]]:
    return "payment.create", _CHARGE


async def _invoice(h: Harness, t: str) -> tuple[str, dict[str, Any]]:
    cus = await _answer(h, _command(t, "customer.create", {"customer_id": "cu1"}, "c7"))
    assert kind(cus) == "customer.created", data(cus)
    attach = {"customer_id": "cu1", "token": "pm_card_visa", "payment_method_id": "pm1"}
    out = await _answer(h, _command(t, "payment_method.attach", attach, "c8"))
    assert kind(out) == "payment_method.attached", data(out)
    body = {"customer_id": "cu1", "payment_method_id": "pm1", "currency": "EUR",
            "invoice_id": "in1", "metadata": _META,
            "line_items": [{"description": "Hours", "amount": 2500}]}  # fmt: skip
    return "invoice.create", body


async def _transfer(h: Harness, t: str) -> tuple[str, dict[str, Any]]:
    return await _transferring(h, t, "transfer.create", transfer_id="tr1", metadata=_META)


async def _refund(h: Harness, t: str, amount: int | None) -> tuple[str, dict[str, Any]]:
    out = await _answer(h, _command(t, "payment.create", {**_CHARGE, "metadata": {}}, "c1"))
    assert kind(out) == "payment.succeeded", data(out)
    body: dict[str, Any] = {"payment_id": "p1", "refund_id": "r1", "metadata": _META}
    if amount is not None:
        body["amount"] = amount
    return "refund.create", body


_CREATES: dict[str, tuple[str, str, str, Callable[..., Any]]] = {
    # name: (operation, key's scope and id, webhook reference key, setup)
    "payment": ("create_payment", "payment:p1", gw.PAYMENT_REF_KEY, _payment),
    "invoice": ("create_invoice", "invoice:in1", gw.INVOICE_REF_KEY, _invoice),
    "transfer": ("create_transfer", "transfer:tr1", gw.TRANSFER_REF_KEY, _transfer),
}

P, R, X = "plain", "ref", "another"  # the key's request: its metadata, or another request
_ANSWERED = {"payment": "payment.succeeded", "invoice": "invoice.created",
             "transfer": "transfer.created"}  # fmt: skip

# (held, webhooks now) -> the metadata of each request sent, in order; answered or not.
_CREATE_WAYS = [
    (P, False, [P], True),
    (P, True, [R, P], True),
    (R, True, [R], True),
    (R, False, [P, R], True),
    (X, False, [P, R], False),
    (X, True, [R, P], False),
]


async def _parked(
    h: Harness, t: str, command_type: str, body: dict[str, Any], operation: str
) -> tuple[Any, Any]:
    """The command parked on its key's failures (nothing reached the provider): the
    gateway, and the request it sent (without `webhooks`)."""
    gateway = _gateway(h, t)
    call = getattr(gateway, operation)
    sent: list[Any] = []

    async def kept(req: Any, *, idempotency_key: str) -> Any:
        sent.append(req)
        return await call(req, idempotency_key=idempotency_key)

    setattr(gateway, operation, kept)
    parked = await h.processor.process(_command(t, command_type, body, "c9"))
    assert [e.topic for e in parked] == [h.settings.retry_topic], parked
    setattr(gateway, operation, call)
    return gateway, sent[0]


def _metadata(way: str, t: str, ref_key: str, ref_id: str) -> dict[str, str]:
    if way == R:
        return {**_META, ref_key: f"{t}:{ref_id}"}
    if way == X:
        return {**_META, "another": "request"}
    return dict(_META)


def _webhooks(gateway: Any, on: bool) -> None:
    if on:
        gateway.capabilities = gateway.capabilities | {Capability.WEBHOOKS}
    else:
        gateway.capabilities = gateway.capabilities - {Capability.WEBHOOKS}


async def _redriven(h: Harness, t: str, command_type: str, body: dict[str, Any]) -> Any:
    return await h.processor.process(_command(t, command_type, body, "c9"))


@pytest.mark.parametrize(("held", "webhooks", "ways", "answered"), _CREATE_WAYS)
@pytest.mark.parametrize("name", list(_CREATES))
async def test_a_let_through_create_is_sent_again_as_the_release_before_sent_it(
    harness: Harness,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    held: str,
    webhooks: bool,
    ways: list[str],
    answered: bool,
) -> None:
    h, t = harness, new_tenant_id()
    operation, scope, ref_key, setup = _CREATES[name]
    key = f"pse:{t}:{scope}"
    h.add_tenant(t, gateway_options={"fail_first": {key: 3}})
    command_type, body = await setup(h, t)
    gateway, sent = await _parked(h, t, command_type, body, operation)
    ref_id = scope.split(":")[1]
    first = sent.model_copy(update={"metadata": _metadata(held, t, ref_key, ref_id)})
    made = await getattr(gateway, operation)(first, idempotency_key=key)
    _webhooks(gateway, webhooks)
    rec = _Recorder(gateway, operation)
    raised = _raised(monkeypatch, command_type)
    out = await _redriven(h, t, command_type, body)
    assert rec.sent == [(_amount(sent), _metadata(w, t, ref_key, ref_id), key) for w in ways]
    _outcome(h, out, answered, _ANSWERED[name], raised, len(ways))
    if answered:
        assert data(_only_event(h, out))["object"]["provider_" + name + "_id"] == getattr(
            made, f"provider_{name}_id"
        )


def _only_event(h: Harness, out: Any) -> Any:
    event = outcome_of(h.settings, out)
    assert event is not None
    return event


def _outcome(
    h: Harness, out: Any, answered: bool, expected: str, raised: list[GatewayError], last: int
) -> None:
    """Answered as the request the key holds, or parked again (a let-through is never
    refused for good), the last refusal the one the handler raised."""
    if answered:
        event = _only_event(h, out)
        assert kind(event) == expected, data(event)
        assert raised == []
        return
    assert [e.topic for e in out] == [h.settings.retry_topic], out
    headers = {k: v.decode() for k, v in out[0].record.headers}
    assert headers["paystream-park-reason"] == "provider_key_conflict", headers
    [exc] = raised
    assert exc.message.endswith(f" #{last}"), exc.message


def _raised(monkeypatch: pytest.MonkeyPatch, command_type: str) -> list[GatewayError]:
    """The gateway errors the command's handler raises."""
    raised: list[GatewayError] = []
    handler = handlers.HANDLERS[command_type]

    async def kept(ctx: Any, data: Any) -> Any:
        try:
            return await handler(ctx, data)
        except GatewayError as exc:
            raised.append(exc)
            raise

    monkeypatch.setitem(handlers.HANDLERS, command_type, kept)
    return raised


# ---- refunds: the release before named the amount left in a refund of the rest -----

# (held: (amount, metadata way), webhooks now) -> each (amount, way) sent; answered.
_LEFT = 2000  # what the table has left of the payment
_REFUND_WAYS: dict[
    str, list[tuple[tuple[int | None, str], bool, list[tuple[int | None, str]], bool]]
] = {
    "the rest": [
        ((_LEFT, P), False, [(None, P), (_LEFT, P)], True),  # by the release before
        ((_LEFT, P), True, [(None, R), (_LEFT, P)], True),
        ((None, R), True, [(None, R)], True),
        ((None, R), False, [(None, P), (_LEFT, P), (_LEFT, R), (None, R)], True),
        ((None, P), True, [(None, R), (_LEFT, P), (_LEFT, R), (None, P)], True),
        ((_LEFT, R), False, [(None, P), (_LEFT, P), (_LEFT, R)], True),
        ((None, X), False, [(None, P), (_LEFT, P), (_LEFT, R), (None, R)], False),
        ((None, X), True, [(None, R), (_LEFT, P), (_LEFT, R), (None, P)], False),
    ],
    "an amount": [
        ((700, P), False, [(700, P)], True),
        ((700, P), True, [(700, R), (700, P)], True),
        ((700, R), False, [(700, P), (700, R)], True),
        ((700, X), True, [(700, R), (700, P)], False),
        ((700, X), False, [(700, P), (700, R)], False),
    ],
}


@pytest.mark.parametrize(
    ("amount", "held", "webhooks", "ways", "answered"),
    [
        (None if name == "the rest" else 700, *case)
        for name, cases in _REFUND_WAYS.items()
        for case in cases
    ],
)
async def test_a_let_through_refund_is_sent_again_as_the_release_before_sent_it(
    harness: Harness,
    monkeypatch: pytest.MonkeyPatch,
    amount: int | None,
    held: tuple[int | None, str],
    webhooks: bool,
    ways: list[tuple[int | None, str]],
    answered: bool,
) -> None:
    h, t = harness, new_tenant_id()
    key = f"pse:{t}:refund:r1"
    h.add_tenant(t, gateway_options={"fail_first": {key: 3}})
    command_type, body = await _refund(h, t, amount)
    gateway, sent = await _parked(h, t, command_type, body, "create_refund")
    ref = gw.REFUND_REF_KEY

    def request(way: tuple[int | None, str]) -> tuple[int | None, dict[str, str], str]:
        return (way[0], _metadata(way[1], t, ref, "r1"), key)

    first = sent.model_copy(
        update={"amount": held[0], "metadata": _metadata(held[1], t, ref, "r1")}
    )
    made = await gateway.create_refund(first, idempotency_key=key)
    _webhooks(gateway, webhooks)
    rec = _Recorder(gateway, "create_refund")
    raised = _raised(monkeypatch, command_type)
    out = await _redriven(h, t, command_type, body)
    assert rec.sent == [request(w) for w in ways]
    _outcome(h, out, answered, "refund.succeeded", raised, len(ways))
    if answered:
        assert data(_only_event(h, out))["object"]["provider_refund_id"] == made.provider_refund_id


# ---- invoice.finalize and invoice.pay: one way only (no metadata), sent once -----------


def _scripted(gateway: Any, operation: str, unavailable: list[bool]) -> list[tuple[Any, str]]:
    """``operation`` refused: as unavailable while ``unavailable`` holds True (retried,
    then parked), then as another request under its key (Stripe's idempotency_error)."""
    sent: list[tuple[Any, str]] = []

    async def refused(req: Any, *, idempotency_key: str) -> Any:
        sent.append((req, idempotency_key))
        if unavailable[0]:
            raise GatewayError(
                ErrorCode.PROVIDER_UNAVAILABLE, "unavailable", provider="simulator", http_status=503
            )
        raise GatewayError(
            ErrorCode.IDEMPOTENCY_ERROR,
            "Keys for idempotent requests can only be used with the same parameters",
            provider="simulator",
            http_status=400,
        )

    setattr(gateway, operation, refused)
    return sent


@pytest.mark.parametrize("command_type", ["invoice.finalize", "invoice.pay"])
async def test_a_let_through_finalize_or_pay_is_sent_once_under_its_key(
    harness: Harness, command_type: str
) -> None:
    h, t = harness, new_tenant_id()
    h.add_tenant(t)
    _, body = await _invoice(h, t)
    made = await _answer(h, _command(t, "invoice.create", body, "c1"))
    assert kind(made) == "invoice.created", data(made)
    gateway = _gateway(h, t)
    _webhooks(gateway, True)
    if command_type == "invoice.pay":
        done = await _answer(h, _command(t, "invoice.finalize", {"invoice_id": "in1"}, "c2"))
        assert kind(done) == "invoice.finalized", data(done)
    operation = command_type.replace("invoice.", "") + "_invoice"
    unavailable = [True]
    sent = _scripted(gateway, operation, unavailable)
    cmd = _command(t, command_type, {"invoice_id": "in1"}, "c3", "k3")
    parked = await h.processor.process(cmd)
    assert [e.topic for e in parked] == [h.settings.retry_topic], parked
    first = list(sent)
    assert first and all(s == first[0] for s in first), first
    sent.clear()
    unavailable[0] = False
    out = await h.processor.process(_command(t, command_type, {"invoice_id": "in1"}, "c3", "k3"))
    assert [e.topic for e in out] == [h.settings.retry_topic], out
    headers = {k: v.decode() for k, v in out[0].record.headers}
    assert headers["paystream-park-reason"] == "provider_key_conflict", headers
    assert sent == [first[0]]  # the same request under the same key, once
