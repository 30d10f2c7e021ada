"""Paddle's API through its official SDK (paddle-python-sdk), from an asyncio worker.

The SDK is synchronous (``requests``): each call runs in a thread of a pool kept for
Paddle alone (a slow Paddle fills it, not the loop's default executor, which DNS lookups
and other libraries share), with the SDK's own timeout set (PAYSTREAM_GATEWAY_TIMEOUT_SECONDS)
and its retries off (the pipeline owns retries; a create looks for what an earlier try
made first). A call given up on (the command's deadline) goes on in its thread until that
timeout, and Paddle may process it later still: a create's lookup cannot see such a try,
so a create is told (``settled``) when its thread ends and whether its answer was lost,
to keep its in-flight key in Redis ``landing_margin`` more then (in_flight.py;
docs/paddle.md, "Exactly once").

The SDK logs each request's URL (INFO), each answer's body (DEBUG) and each failure with
its URL (ERROR) through the logger it is given: customers' emails and ids. It is given
one of its own that goes nowhere (paystream reports Paddle's errors itself, by code).

The SDK's transport is used, not its typed resources: ``get_raw``, ``post_raw`` and
``patch_raw`` send the request with the key, ``Paddle-Version`` and Paddle's headers, and
raise its ``ApiError`` (type, code, detail) for Paddle's error shape; the JSON is read
here, so that a status or field this version does not know parks the command rather than
failing in an entity's constructor. Its environment is a closed enum of Paddle's two
hosts: an object with the ``base_url`` the tenant's deployment names stands in for it
(PAYSTREAM_PADDLE_API_BASE; the tests' fake of Paddle)."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from paystream.gateways.errors import ErrorCode, GatewayError
from paystream.gateways.paddle.errors import (
    PROVIDER,
    map_paddle_answer,
    map_transport_error,
    unreadable,
)

__all__ = ["PADDLE_THREADS", "PaddleClient", "lost_answer"]

# Failures after which the request may still be made at Paddle: no answer came back.
_LOST_ANSWER = frozenset({ErrorCode.TIMEOUT, ErrorCode.PROVIDER_UNAVAILABLE})

# Requests to Paddle in flight at once, per worker process (each holds a thread for as
# long as Paddle takes, up to the gateway timeout).
PADDLE_THREADS = 16

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=PADDLE_THREADS, thread_name_prefix="paddle")
        return _pool


def _silent_logger() -> logging.Logger:
    """The SDK's logger: no handler, not propagated (its lines name customers)."""
    log = logging.getLogger("paystream.gateways.paddle.sdk")
    log.propagate = False
    log.disabled = True
    if not log.handlers:
        log.addHandler(logging.NullHandler())
    return log


class _Environment:
    """What the SDK reads of its ``Environment``: the base URL requests are joined to."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/") + "/"


class PaddleClient:
    """One tenant's API key, and the SDK client that sends its requests."""

    def __init__(self, api_key: str, base_url: str, timeout: float) -> None:
        from paddle_billing import Client, Options
        from requests.adapters import HTTPAdapter

        self._sdk = Client(
            api_key,
            options=Options(environment=_Environment(base_url)),
            retry_count=0,
            timeout=timeout,
            logger=_silent_logger(),
        )
        session = self._sdk.client
        # No retries below ours (the SDK mounts urllib3 retries on 429 and 5xx for
        # https://, which would swallow the answer's body), and no redirects: every
        # request carries the seller's key.
        session.mount("https://", HTTPAdapter(max_retries=0))
        session.max_redirects = 0

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
        settled: Callable[[bool], None] | None = None,
    ) -> dict[str, Any]:
        """Paddle's answer (``{"data": ..., "meta": ...}``), or a GatewayError.
        ``settled``: called from the request's thread as it ends, True when its answer
        was lost (the request may still be made at Paddle)."""
        send = functools.partial(self._send, method, path, body, query)
        future = _executor().submit(send)
        if settled is not None:
            future.add_done_callback(functools.partial(_settled, settled))
        # (cancelled by the deadline: the thread goes on, and tells ``settled``)
        return await asyncio.wrap_future(future)

    @property
    def timeout(self) -> float:
        return float(self._sdk.timeout)

    @property
    def landing_margin(self) -> float:
        """How long after our timeout Paddle is taken to be still processing a request:
        one more timeout (docs/paddle.md, "Exactly once")."""
        return self.timeout

    def _send(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        query: Mapping[str, str] | None,
    ) -> dict[str, Any]:
        import requests
        from paddle_billing.Exceptions.ApiError import ApiError

        try:
            if method == "GET":
                response = self._sdk.get_raw(path, dict(query) if query else None)
            elif method == "POST":
                response = self._sdk.post_raw(path, dict(body or {}))
            elif method == "PATCH":
                response = self._sdk.patch_raw(path, dict(body or {}))
            else:  # pragma: no cover - (a programming error)
                raise ValueError(method)
        except ApiError as exc:
            answer = exc.response
            try:
                parsed = answer.json() if answer is not None else None
            except ValueError:
                parsed = None
            status = answer.status_code if answer is not None else None
            raise map_paddle_answer(status, parsed, _retry_after(exc)) from None
        except requests.HTTPError as exc:  # (an error answer without Paddle's shape)
            answer = exc.response
            raise map_paddle_answer(
                answer.status_code if answer is not None else None, None
            ) from None
        except requests.TooManyRedirects as exc:
            raise GatewayError(
                map_paddle_answer(None, None).code,
                "Paddle's answer was a redirect (not followed: every request carries the key)",
                provider=PROVIDER,
                retryable=False,
                reached_provider=False,
            ) from exc
        except (requests.RequestException, OSError) as exc:
            raise map_transport_error(exc) from exc
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            # The SDK builds its ApiError inside its own handler of requests' HTTPError,
            # and fails there on answers it does not expect (a proxy's: a Retry-After
            # date, an error without documentation_url, an error that is a string).
            cause = exc.__context__
            if not isinstance(cause, requests.HTTPError):
                raise
            answer = cause.response
            try:
                parsed = answer.json() if answer is not None else None
            except ValueError:
                parsed = None
            status = answer.status_code if answer is not None else None
            raise map_paddle_answer(status, parsed) from None
        try:
            parsed = response.json()
        except ValueError:
            raise unreadable("not JSON") from None
        if not isinstance(parsed, dict) or "data" not in parsed:
            raise unreadable("no data")
        return parsed

    async def aclose(self) -> None:
        """Close the SDK's HTTP session (its pooled connections)."""
        self._sdk.client.close()


def lost_answer(exc: BaseException | None) -> bool:
    """A failure after which the request may still be made at Paddle."""
    return isinstance(exc, GatewayError) and exc.code in _LOST_ANSWER


def _settled(settled: Callable[[bool], None], future: Future[dict[str, Any]]) -> None:
    settled(lost_answer(None if future.cancelled() else future.exception()))


def _retry_after(exc: Any) -> float | None:
    value = getattr(exc, "retry_after", None)
    return float(value) if isinstance(value, int | float) and value > 0 else None
