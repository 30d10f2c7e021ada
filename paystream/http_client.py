"""Async client for the HTTP command ingress (``POST /v1/commands``): for services that
send commands without a Kafka client.

    async with IngressClient("https://payments.example.com", key) as client:
        outcome = await client.command("payment.create", "acme", {...}, wait=10)

A command is sent as a structured CloudEvent. With ``wait``, the answer is its outcome
(a CloudEvent, as the events topic carries it) or, if that takes longer, an
:class:`Accepted`; without, an :class:`Accepted` once the broker has it. A 503, a 429
(the tenant's rate limit, after its ``Retry-After``) or a lost connection is retried
with the same command (the same bytes), which is safe: one command
id is one command, answered once; past the client's time :class:`IngressUnreachable`
says whether it may have been taken. Refusals raise :class:`IngressError`.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import yarl
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.v1.event import CloudEvent

from paystream.client import build_command
from paystream.errors import PaystreamError

__all__ = ["Accepted", "IngressClient", "IngressError", "IngressUnreachable"]

_COMMANDS_PATH = "/v1/commands"


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

    def __init__(
        self, status: int, error: str, message: str, errors: list[Any], command_id: str
    ) -> None:
        super().__init__(f"{status} {error}: {message}")
        self.status, self.error, self.errors, self.command_id = status, error, errors, command_id


class IngressUnreachable(PaystreamError):
    """No answer within the client's time, retries included. ``maybe_taken``: a request
    reached the server (it may have produced the command): send the same command again,
    ``command_id`` and all, never a new one (that would be a second payment)."""

    def __init__(self, command_id: str, maybe_taken: bool, why: str) -> None:
        said = "may have been taken" if maybe_taken else "was not sent"
        super().__init__(f"command {command_id} {said} ({why})")
        self.command_id, self.maybe_taken = command_id, maybe_taken


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
        if retries < 0 or not timeout > 0:
            raise ValueError("retries must be 0 or more, timeout above 0")
        if "@" in yarl.URL(base_url).raw_authority:
            # aiohttp refuses a login in the URL beside the bearer key, deep in a call.
            raise ValueError("base_url holds a login: the key is the only credential")
        # The base URL, or the commands URL itself (what `paystream dev` prints): pasted,
        # it was posted to /v1/commands/v1/commands, a bare 404.
        base = base_url.rstrip("/")
        self._url = base if base.endswith(_COMMANDS_PATH) else base + _COMMANDS_PATH
        self._key = key
        self._session = session
        self._own_session = session is None
        self._retries = retries
        # A call's whole time beyond its wait, every retry included.
        self._timeout = timeout

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
        """Build (see :func:`paystream.client.build_command`), send and answer in one call.
        Give ``command_id`` to retry it yourself after :class:`IngressUnreachable`."""
        return await self.send(build_command(command_type, tenant_id, data, **kw), wait=wait)

    async def send(
        self, command: CloudEvent, *, wait: float | None = None
    ) -> CloudEvent | Accepted:
        """Send ``command``; its outcome (waited for up to ``wait`` seconds, at most 30:
        the ingress's most) or Accepted."""
        if self._session is None:
            raise PaystreamError("use `async with IngressClient(...) as client:`")
        command_id = str(command.get_id())
        message = ce_http.to_structured_event(command)  # (one body for every attempt)
        headers = {**message.headers, "Authorization": f"Bearer {self._key}"}
        seconds = _wait_seconds(wait)
        if seconds:
            headers["Prefer"] = f"wait={seconds}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout + seconds
        maybe_taken = False
        why = ""
        failures = 0  # attempts that failed (a 429 is no failure: it says "later")
        while (left := deadline - loop.time()) > 0:
            retry_after: float | None = None
            try:
                async with self._session.post(
                    self._url,
                    data=message.body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=left),
                ) as resp:
                    if resp.status == 429:
                        # The tenant's rate limit at the ingress: nothing was taken by
                        # this attempt; sent again once its token is due, until the time
                        # is up, however many that takes.
                        retry_after = await _rate_limited_wait(resp)
                        why = "429"
                    else:
                        maybe_taken = True
                        if resp.status not in _SENT_AGAIN:
                            return await _answer(resp, command_id)
                        failures += 1
                        retry_after = _retry_after_seconds(resp.headers.get("Retry-After"))
                        why = str(resp.status)
            except aiohttp.ClientConnectorError as exc:  # not connected: nothing sent
                failures += 1
                # The operating system's reason (connection refused, no route, a name
                # not resolved): the class name alone said nothing (review h60m).
                reason = _connect_reason(exc.os_error)
                why = f"{type(exc).__name__}: {reason}"
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                # Maybe taken, maybe not: the same command again is the safe retry.
                failures += 1
                maybe_taken, why = True, type(exc).__name__
            if failures > self._retries:
                break
            delay = _backoff(failures, retry_after)
            if loop.time() + delay >= deadline:
                break  # (no attempt could be answered in time)
            await asyncio.sleep(delay)
        # Out of attempts or time, the last answer a 503 or 429: no answer, and whether
        # any attempt may have been taken (then only the same id may be sent again).
        raise IngressUnreachable(command_id, maybe_taken, why or "out of time")


def _connect_reason(err: OSError) -> str:
    """Why a connection was not made, in the system's words: a refusal carries only its
    number (ECONNREFUSED), a failed name lookup its resolver's text under a negative
    number, a TLS failure the SSL library's message (reviews h60m, h60o)."""
    if isinstance(err, ssl.SSLError):
        return str(err) or type(err).__name__
    if isinstance(err.errno, int) and err.errno > 0:
        return os.strerror(err.errno)  # (asyncio's own text names no reason)
    return str(err.strerror or err) or type(err).__name__


# Sent again as the same command: the ingress's 503, and a proxy's 502 or 504 (the
# ingress behind it may have taken the command; answered as a refusal, its sender might
# have sent it again as a new one: review finding).
_SENT_AGAIN = frozenset({502, 503, 504})


def _wait_seconds(wait: float | None) -> int:
    """The whole seconds to ask to wait (``Prefer: wait`` takes whole seconds): at least
    the wait asked, at most the ingress's 30; 0 for none."""
    if wait is None or wait <= 0:
        return 0
    if not math.isfinite(wait):
        raise ValueError("wait must be a finite number of seconds")
    return min(math.ceil(wait), 30)


async def _answer(resp: aiohttp.ClientResponse, command_id: str) -> CloudEvent | Accepted:
    body = await resp.read()
    try:
        if resp.status == 200:
            outcome = ce_http.from_http_event(ce_http.HTTPMessage(dict(resp.headers), body))
            if not isinstance(outcome, CloudEvent):
                raise ValueError("not a CloudEvents 1.0 event")
            return outcome
        answer = json.loads(body)
        if resp.status == 202:
            return Accepted(
                tenant=str(answer["tenant"]),
                command_id=str(answer["command_id"]),
                idempotency_key=str(answer["idempotency_key"]),
            )
        if not isinstance(answer, dict):
            raise ValueError("not a JSON object")
    except (ValueError, KeyError, TypeError, BaseCloudEventException):
        # Not the ingress's answer (another server at the URL, a proxy's error page).
        text = body[:200].decode(errors="replace")
        raise IngressError(resp.status, "bad_answer", text, [], command_id) from None
    raise IngressError(
        resp.status,
        str(answer.get("error", "http_error")),
        str(answer.get("message", "")),
        list(answer.get("errors") or []),
        command_id,
    )


def _backoff(failures: int, asked: float | None) -> float:
    """Seconds before the next attempt: what the server asked (a 429's ``retry_after_ms``,
    a 503's Retry-After) or an exponential step by failures so far, with jitter above it
    (never sooner than asked), at most 5 s."""
    delay = min(asked if asked is not None else 0.2 * 2 ** max(failures - 1, 0), 5.0)
    return delay * (1 + 0.5 * random.random())


def _retry_after_seconds(header: str | None) -> float | None:
    """Retry-After's whole seconds (an HTTP date or anything else: None)."""
    if header and header.isascii() and header.isdigit():
        return float(int(header))
    return None


async def _rate_limited_wait(resp: aiohttp.ClientResponse) -> float | None:
    """A 429's wait in seconds: its body's ``retry_after_ms`` (Retry-After rounds up to
    whole seconds), else its Retry-After."""
    try:
        answer = json.loads(await resp.read())
        ms = answer.get("retry_after_ms") if isinstance(answer, dict) else None
    except (ValueError, aiohttp.ClientError):
        ms = None
    if isinstance(ms, int) and not isinstance(ms, bool) and 0 < ms <= 3_600_000:
        return ms / 1000
    return _retry_after_seconds(resp.headers.get("Retry-After"))
