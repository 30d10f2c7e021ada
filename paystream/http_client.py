"""Async client for the HTTP command ingress (``POST /v1/commands``): for services that
send commands without a Kafka client.

    async with IngressClient("https://payments.example.com", key) as client:
        outcome = await client.command("payment.create", "acme", {...}, wait=10)

A command is sent as a structured CloudEvent. With ``wait``, the answer is its outcome
(a CloudEvent, as the events topic carries it) or, if that takes longer, an
:class:`Accepted`; without, an :class:`Accepted` once the broker has it. A 503 or a lost
connection is retried with the same command id, which is safe: one command id is one
command, answered once. Other refusals raise :class:`IngressError` (no retry helps).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.v1.event import CloudEvent

from paystream.client import build_command
from paystream.errors import PaystreamError

__all__ = ["Accepted", "IngressClient", "IngressError"]


@dataclass(frozen=True)
class Accepted:
    """On the commands topic; its outcome follows on the events topic (or comes as the
    answer to the same command sent again with a wait)."""

    tenant: str
    command_id: str
    idempotency_key: str


class IngressError(PaystreamError):
    """The ingress refused the command: ``status`` and ``error`` say why (the README's
    "Over HTTP"; ``errors``, for invalid data, name the fields)."""

    def __init__(self, status: int, error: str, message: str, errors: list[Any]) -> None:
        super().__init__(f"{status} {error}: {message}")
        self.status, self.error, self.errors = status, error, errors


class IngressClient:
    """Sends commands to one paystream deployment's ingress under one key (a tenant's
    ``psk_…`` or the platform's PAYSTREAM_INGRESS_TOKEN)."""

    def __init__(
        self,
        base_url: str,
        key: str,
        *,
        session: aiohttp.ClientSession | None = None,
        retries: int = 3,
        timeout: float = 15.0,
    ) -> None:
        self._url = base_url.rstrip("/") + "/v1/commands"
        self._key = key
        self._session = session
        self._own_session = session is None
        self._retries = retries
        self._timeout = timeout  # per request, beyond any wait

    async def __aenter__(self) -> IngressClient:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def command(
        self,
        command_type: str,
        tenant_id: str,
        data: Mapping[str, Any],
        *,
        wait: float | None = None,
        **kw: Any,
    ) -> CloudEvent | Accepted:
        """Build (see :func:`paystream.client.build_command`), send and answer in one call."""
        return await self.send(build_command(command_type, tenant_id, data, **kw), wait=wait)

    async def send(
        self, command: CloudEvent, *, wait: float | None = None
    ) -> CloudEvent | Accepted:
        """Send ``command``; its outcome (waited for up to ``wait`` seconds) or Accepted."""
        if self._session is None:
            raise PaystreamError("use `async with IngressClient(...) as client:`")
        message = ce_http.to_structured_event(command)
        headers = {**message.headers, "Authorization": f"Bearer {self._key}"}
        if wait:
            headers["Prefer"] = f"wait={max(1, round(wait))}"
        budget = aiohttp.ClientTimeout(total=self._timeout + (wait or 0))
        for attempt in range(self._retries + 1):
            last = attempt == self._retries
            try:
                async with self._session.post(
                    self._url, data=message.body, headers=headers, timeout=budget
                ) as resp:
                    if resp.status == 503 and not last:
                        await _backoff(attempt, resp.headers.get("Retry-After"))
                        continue
                    return await _answer(resp)
            except (aiohttp.ClientConnectionError, TimeoutError):
                # Maybe taken, maybe not: the same command again is the safe retry.
                if last:
                    raise
                await _backoff(attempt, None)
        raise AssertionError("unreachable")  # (the last attempt returns or raises)


async def _answer(resp: aiohttp.ClientResponse) -> CloudEvent | Accepted:
    body = await resp.read()
    if resp.status == 200:
        outcome = ce_http.from_http_event(ce_http.HTTPMessage(dict(resp.headers), body))
        return outcome  # type: ignore[return-value]  # (a 1.0 event: the ingress's)
    try:
        answer = await resp.json(content_type=None)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):  # (the HTTP server's own plain-text refusals)
        raise IngressError(resp.status, "http_error", body[:200].decode(errors="replace"), [])
    if resp.status == 202:
        return Accepted(
            tenant=str(answer["tenant"]),
            command_id=str(answer["command_id"]),
            idempotency_key=str(answer["idempotency_key"]),
        )
    raise IngressError(
        resp.status,
        str(answer.get("error", "http_error")),
        str(answer.get("message", "")),
        list(answer.get("errors") or []),
    )


async def _backoff(attempt: int, retry_after: str | None) -> None:
    delay = float(retry_after) if retry_after and retry_after.isdigit() else 0.2 * 2**attempt
    await asyncio.sleep(min(delay, 5.0) * (0.5 + random.random()))
