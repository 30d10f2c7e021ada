"""Tenant API keys that expire or may send only some commands, at the ingress in-process
(the e2e cases are in tests/e2e/test_http_ingress.py). Whatever a key may not send is
refused with nothing produced; what a refusal says, only the key's holder learns."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import click
import pytest
from aiohttp.test_utils import TestClient, TestServer

from paystream import metrics
from paystream.tenancy.ingress_keys import new_key
from paystream.tenancy.models import UNREGISTERED, Tenant
from paystream.web import ingress as ingress_module
from tests.web.ingress_app import ingress_app

STRUCTURED = {"Content-Type": "application/cloudevents+json"}
PAST = datetime.now(UTC) - timedelta(seconds=1)


def _command(command: str, tenant: str = "acme", data: dict[str, Any] | None = None) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": "c1",
            "source": "/t",
            "type": f"com.paystream.command.{command}",
            "tenantid": tenant,
            "data": data if data is not None else {"payment_id": "pay_1", "amount": 100},
        }
    ).encode()


def _bearer(key: str, **headers: str) -> dict[str, str]:
    return {**STRUCTURED, "Authorization": f"Bearer {key}", **headers}


def _count(tenant: str, result: str) -> float:
    return metrics.INGRESS.labels(tenant, result)._value.get()


@pytest.mark.asyncio
async def test_a_restricted_key_is_refused_other_commands_in_either_mode() -> None:
    kid, key, kept = new_key(commands=["payment.create"])
    app, produced, _ = ingress_app(Tenant(tenant_id="acme", ingress_keys={kid: kept}))
    async with TestClient(TestServer(app)) as client:
        r = await client.post("/v1/commands", data=_command("refund.create"), headers=_bearer(key))
        answer = await r.json()
        assert r.status == 403 and answer["allowed"] == ["payment.create"]
        assert answer["message"].startswith(f"key {kid} may not send refund.create")
        # Binary mode, its type percent-encoded: checked as decoded.
        binary = {
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": "c2",
            "ce-source": "/t",
            "ce-type": quote("com.paystream.command.refund.create", safe=""),
            "ce-tenantid": "acme",
        }
        data = json.dumps({"payment_id": "pay_1"})
        r = await client.post("/v1/commands", data=data, headers=binary)
        assert r.status == 403
        # A type read another way (case, a trailing space, no such verb) is no command.
        for odd in (
            "com.paystream.command.Refund.create",
            "com.paystream.command.refund.create%20",
            "com.paystream.command.refund.payout",
        ):
            r = await client.post("/v1/commands", data=data, headers={**binary, "ce-type": odd})
            assert r.status == 400, (odd, r.status)
        # A structured body beside a `ce-type` header: the body's type is the one checked.
        r = await client.post(
            "/v1/commands",
            data=_command("refund.create"),
            headers=_bearer(key, **{"ce-type": "com.paystream.command.payment.create"}),
        )
        assert r.status in (400, 403), r.status
    assert produced == []


@pytest.mark.asyncio
async def test_an_expired_key_is_told_so_and_a_forged_secret_under_its_id_is_not() -> None:
    kid, key, kept = new_key(expires_at=PAST)
    app, produced, _ = ingress_app(Tenant(tenant_id="acme", ingress_keys={kid: kept}))
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    async with TestClient(TestServer(app)) as client:
        r = await client.post("/v1/commands", data=_command("payment.create"), headers=_bearer(key))
        assert r.status == 401 and (await r.json())["error"] == "key_expired"
        r = await client.post(
            "/v1/commands", data=_command("payment.create"), headers=_bearer(forged)
        )
        body = await r.json()
        assert r.status == 401 and body["error"] == "unauthorized" and kid not in body["message"]
        # With `Expect: 100-continue`: refused before the body is sent.
        reader, writer = await asyncio.open_connection(client.host, client.port)
        try:
            writer.write(
                (
                    f"POST /v1/commands HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                    "Content-Type: application/cloudevents+json\r\nContent-Length: 10\r\n"
                    "Expect: 100-continue\r\n\r\n"
                ).encode()
            )
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 5)
        finally:
            writer.close()
        assert b" 401 " in line
    assert produced == []


@pytest.mark.asyncio
async def test_a_restricted_key_sent_for_another_tenant_is_the_one_answer() -> None:
    a_id, a_key, a_kept = new_key(commands=["refund.*"])
    b_id, _, b_kept = new_key()
    app, produced, _ = ingress_app(
        Tenant(tenant_id="acme", ingress_keys={a_id: a_kept}),
        Tenant(tenant_id="globex", ingress_keys={b_id: b_kept}),
    )
    async with TestClient(TestServer(app)) as client:
        r = await client.post(
            "/v1/commands", data=_command("refund.create", "globex"), headers=_bearer(a_key)
        )
        assert r.status == 401 and (await r.json())["error"] == "unauthorized"
        r = await client.post(
            "/v1/commands", data=_command("refund.create", "acme"), headers=_bearer(a_key)
        )
        assert r.status == 202
    assert [t for t, _ in produced] == ["acme"]


@pytest.mark.asyncio
async def test_an_expired_keys_refusals_are_counted_as_its_tenants() -> None:
    """Review h71b: its secret matched, so whose key it is is known. Counted among
    made-up keys, a service still sending a rolled key past its grace did not show."""
    kid, key, kept = new_key(expires_at=PAST)
    app, produced, _ = ingress_app(Tenant(tenant_id="metr", ingress_keys={kid: kept}))
    anonymous = _count(UNREGISTERED, "unauthorized")
    async with TestClient(TestServer(app)) as client:
        r = await client.post(
            "/v1/commands", data=_command("payment.create", "metr"), headers=_bearer(key)
        )
        assert r.status == 401 and (await r.json())["error"] == "key_expired"
    assert produced == []
    assert _count(UNREGISTERED, "unauthorized") == anonymous
    assert _count("metr", "key_expired") == 1


@pytest.mark.asyncio
async def test_a_key_expiring_while_its_body_is_read_is_told_it_expired(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review h71b: let in before its body, expired once the body was in: answered the
    generic 401, not `key_expired` as documented."""
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    kid, key, kept = new_key(expires_at=expires)
    clock = iter([expires - timedelta(seconds=1), expires])  # (before the body, after it)

    class Clock(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return next(clock)

    monkeypatch.setattr(ingress_module, "datetime", Clock)
    app, produced, _ = ingress_app(Tenant(tenant_id="slow", ingress_keys={kid: kept}))
    async with TestClient(TestServer(app)) as client:
        r = await client.post(
            "/v1/commands", data=_command("payment.create", "slow"), headers=_bearer(key)
        )
        assert r.status == 401 and (await r.json())["error"] == "key_expired"
    assert produced == []


def _api_key(
    monkeypatch: pytest.MonkeyPatch, tenant: Tenant | None, *args: str
) -> tuple[Any, list[Tenant]]:
    """`paystream tenants api-key ...` against ``tenant`` (None: no such tenant): (its
    result, what it wrote)."""
    from click.testing import CliRunner

    from paystream.cli import api_keys

    written: list[Tenant] = []

    async def put(settings: Any, base: Any, updated: Any) -> None:
        written.append(updated)

    monkeypatch.setattr(api_keys, "_settings", lambda: None)

    async def registered(settings: Any, tenant_id: str) -> Tenant | None:
        return tenant  # (the registry as read; the CLI's own checks of TENANT_ID still run)

    monkeypatch.setattr("paystream.tenancy.registry.registered_tenant", registered)
    monkeypatch.setattr("paystream.tenancy.registry.put_tenant_unless_changed", put)
    return CliRunner().invoke(api_keys.tenants_api_key, list(args)), written


def _successor(before: Tenant, after: Tenant) -> Any:
    (new,) = [k for i, k in after.ingress_keys.items() if i not in before.ingress_keys]
    return new


def test_a_rolled_key_s_successor_keeps_its_lifetime(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review h71b: a 90-day key rolled gave a successor that never expired."""
    made = datetime.now(UTC) - timedelta(days=80)
    kid, _, kept = new_key(
        "support", made, expires_at=made + timedelta(days=90), commands=["refund.*"]
    )
    result, written = _api_key(
        monkeypatch, Tenant(tenant_id="acme", ingress_keys={kid: kept}), "roll", "acme", kid
    )
    assert result.exit_code == 0, result.output
    (successor,) = [k for i, k in written[0].ingress_keys.items() if i != kid]
    assert successor.commands == ("refund.*",) and successor.label == "support"
    assert successor.expires_at is not None
    lifetime = successor.expires_at - successor.created_at
    assert lifetime == timedelta(days=90)
    # The old key: its grace (24 h) is sooner than its own 10 days left.
    assert written[0].ingress_keys[kid].expires_at - successor.created_at == timedelta(hours=24)


def test_an_expiry_past_the_calendar_is_a_usage_error() -> None:
    """Review h71b: a valid time with its offset whose UTC is past year 9999 ended in an
    OverflowError traceback."""
    from paystream.cli.api_keys import _expiry

    with pytest.raises(click.BadParameter):
        _expiry(None, "9999-12-31T23:00:00-05:00", datetime.now(UTC))


@pytest.mark.parametrize("grace", ["10m", "0"])
def test_a_rolled_key_is_not_rolled_again(monkeypatch: pytest.MonkeyPatch, grace: str) -> None:
    """Review h71d: a never-expiring key rolled (a 10-minute grace, or 0 for a leak), then
    rolled again (the operator following the 401's hint): its expiry was then its grace,
    and the second successor was given that as its lifetime, expiring within minutes.
    Refused now, naming the successor to roll instead."""
    made = datetime.now(UTC) - timedelta(seconds=30)
    kid, _, kept = new_key("checkout", made)
    tenant = Tenant(tenant_id="acme", ingress_keys={kid: kept})
    first, written = _api_key(monkeypatch, tenant, "roll", "acme", kid, "--expire-old-in", grace)
    assert first.exit_code == 0, first.output
    successor = _successor(tenant, written[0])
    assert successor.expires_at is None and "never expires" in first.output
    new_id = next(i for i in written[0].ingress_keys if i != kid)
    assert written[0].ingress_keys[kid].rolled_to == new_id
    second, again = _api_key(monkeypatch, written[0], "roll", "acme", kid)
    assert second.exit_code == 1 and again == []
    assert f"rolled already, to {new_id}" in second.output


def test_roll_says_when_the_successor_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    made = datetime.now(UTC) - timedelta(days=80)
    kid, _, kept = new_key("support", made, expires_at=made + timedelta(days=90))
    tenant = Tenant(tenant_id="acme", ingress_keys={kid: kept})
    result, written = _api_key(monkeypatch, tenant, "roll", "acme", kid)
    assert result.exit_code == 0, result.output
    expires_at = _successor(tenant, written[0]).expires_at
    assert expires_at is not None and expires_at.isoformat() in result.output


@pytest.mark.parametrize("zero", ["0", "0s", "0d"])
def test_a_key_cannot_be_made_expired(monkeypatch: pytest.MonkeyPatch, zero: str) -> None:
    """Review h71d: `create --expires-in 0` (meant for `roll --expire-old-in`) made a key
    expired when made, exit 0, taking one of the tenant's 10 places."""
    result, written = _api_key(
        monkeypatch, Tenant(tenant_id="acme"), "create", "acme", "--expires-in", zero
    )
    assert result.exit_code == 2 and written == [], result.output


@pytest.mark.parametrize("verb", ["roll", "revoke"])
def test_a_key_given_for_its_id_is_not_repeated(monkeypatch: pytest.MonkeyPatch, verb: str) -> None:
    """Review h71d: the key pasted where its id goes was printed back whole in the error
    (a terminal's scrollback, a CI log)."""
    kid, text, kept = new_key("checkout")
    tenant = Tenant(tenant_id="acme", ingress_keys={kid: kept})
    result, written = _api_key(monkeypatch, tenant, verb, "acme", text)
    assert result.exit_code == 2 and written == []
    assert text.split("_", 2)[2] not in result.output and f"its id is {kid}" in result.output


@pytest.mark.asyncio
async def test_a_command_a_key_may_not_send_is_forbidden_whatever_its_data() -> None:
    """Review h71d: a refunds-only key sending a payment.create its model refuses got 400
    validation_error (the payment's fields listed) and was counted `invalid`: told to fix
    data it may never send, and on call saw no `forbidden`."""
    kid, key, kept = new_key(commands=["refund.*"])
    app, produced, _ = ingress_app(Tenant(tenant_id="scoped", ingress_keys={kid: kept}))
    before = _count("scoped", "forbidden")
    async with TestClient(TestServer(app)) as client:
        r = await client.post(
            "/v1/commands", data=_command("payment.create", "scoped", {}), headers=_bearer(key)
        )
        assert r.status == 403 and (await r.json())["error"] == "forbidden"
    assert produced == [] and _count("scoped", "forbidden") == before + 1


@pytest.mark.asyncio
async def test_an_expired_key_still_sent_is_logged_by_its_id_and_label(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Review h71d: the metric names the tenant only; on call needs the key (and, by its
    label, the service) still sending it. Logged at most once a minute per key."""
    kid, key, kept = new_key("checkout", expires_at=PAST)
    app, _, _ = ingress_app(Tenant(tenant_id="logged", ingress_keys={kid: kept}))
    async with TestClient(TestServer(app)) as client:
        for _ in range(3):
            r = await client.post(
                "/v1/commands", data=_command("payment.create", "logged"), headers=_bearer(key)
            )
            assert r.status == 401
    said = [r.getMessage() for r in caplog.records if "is still being sent" in r.getMessage()]
    assert len(said) == 1 and kid in said[0] and "'checkout'" in said[0]
    assert key.split("_", 2)[2] not in caplog.text


def test_a_rolled_key_leaked_in_its_grace_is_pointed_to_revoke(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review h71g: a key rolled (24 h grace) and then found leaked. `roll A
    --expire-old-in 0` is refused, and "roll that one (B)" followed with 0 would end B,
    the key the services moved to, leaving the leaked A valid. The refusal names
    `revoke` for A."""
    a_id, _, a = new_key("checkout", datetime.now(UTC) - timedelta(days=3))
    tenant = Tenant(tenant_id="acme", ingress_keys={a_id: a})
    first, written = _api_key(monkeypatch, tenant, "roll", "acme", a_id)
    assert first.exit_code == 0, first.output
    again, none = _api_key(monkeypatch, written[0], "roll", "acme", a_id, "--expire-old-in", "0")
    assert again.exit_code == 1 and none == []
    assert f"revoke acme {a_id}" in again.output, again.output


def test_a_rolled_key_whose_successor_is_revoked_is_told_how_to_replace_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review h71g: the successor revoked, "roll that one" led to "has no key", and a
    bare `create` would widen a refunds-only 90-day key. The refusal gives the `create`
    that keeps its label and commands."""
    made = datetime.now(UTC) - timedelta(days=80)
    a_id, _, a = new_key(
        "support", made, expires_at=made + timedelta(days=90), commands=["refund.*"]
    )
    tenant = Tenant(tenant_id="acme", ingress_keys={a_id: a})
    _, written = _api_key(monkeypatch, tenant, "roll", "acme", a_id)
    b_id = written[0].ingress_keys[a_id].rolled_to
    revoked, after = _api_key(monkeypatch, written[0], "revoke", "acme", str(b_id))
    assert revoked.exit_code == 0 and after[0].ingress_keys[a_id].rolled_to == b_id
    told, _ = _api_key(monkeypatch, after[0], "roll", "acme", a_id)
    assert told.exit_code == 1 and "roll that one" not in told.output
    assert "--label support --allow refund.*" in told.output, told.output


def test_a_key_given_as_a_label_is_not_written_to_the_registry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review h71g: the label is written to the registry topic, shown by `list` and
    logged: a key given as one was kept in plain text."""
    kid, text, kept = new_key("checkout")
    tenant = Tenant(tenant_id="acme", ingress_keys={kid: kept})
    result, written = _api_key(monkeypatch, tenant, "create", "acme", "--label", text)
    assert result.exit_code == 2 and written == []
    assert text.split("_", 2)[2] not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ("roll", "{key}", "{kid}"),  # the key pasted for the tenant id
        ("revoke", "{key}", "{kid}"),
        ("list", "{key}"),
        ("create", "{key}"),
        ("roll", "acme", " {key}"),  # copied with a leading blank
        ("revoke", "acme", "Bearer {key}"),  # copied from a header
        ("create", "acme", "--allow", "{key}"),
    ],
)
def test_a_key_given_anywhere_is_not_repeated(
    monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    """Review h71g: given as TENANT_ID ("unknown tenant 'psk_…'"), after a blank or
    `Bearer `, or to --allow ("'psk_…' names no command"), a key was printed back."""
    kid, text, kept = new_key("checkout")
    tenant = Tenant(tenant_id="acme", ingress_keys={kid: kept})
    given = [a.format(key=text, kid=kid) for a in args]
    result, written = _api_key(monkeypatch, None if args[1] == "{key}" else tenant, *given)
    assert result.exit_code != 0 and written == []
    assert text.split("_", 2)[2] not in result.output, result.output


@pytest.mark.xfail(
    strict=True,
    reason="known gap (review h71g): a key held only in a tenant record this server cannot "
    "read (a newer version's) is answered as a made-up key, 401, not 503",
)
@pytest.mark.asyncio
async def test_a_key_only_in_a_record_this_server_cannot_read_is_answered_503() -> None:
    """A record from a newer version (a field this one does not know) holding a new key:
    the tenant's keys this server knows get the documented 503; the new one, held only
    there, gets the 401 a client does not retry. README: change keys once every server
    runs the version."""
    from paystream.tenancy.registry import tenant_record

    a_id, a_text, a = new_key("checkout")
    app, produced, registry = ingress_app(Tenant(tenant_id="acme", ingress_keys={a_id: a}))
    b_id, b_text, b = new_key("checkout", taken={a_id})
    newer = tenant_record(Tenant(tenant_id="acme", ingress_keys={a_id: a, b_id: b}))
    newer["ingress_keys"][a_id]["from_a_newer_version"] = b_id  # type: ignore[index]
    registry.apply(b'"acme"', json.dumps(newer, default=str).encode())
    assert "acme" in registry.unreadable
    async with TestClient(TestServer(app)) as client:
        answers = [
            (
                await client.post(
                    "/v1/commands", data=_command("payment.create"), headers=_bearer(key)
                )
            ).status
            for key in (a_text, b_text)
        ]
    assert produced == []
    assert answers == [503, 503]
