"""Paddle's API through its official SDK (paddle-python-sdk), from an asyncio worker.

The SDK is synchronous (``requests``): each call runs in a thread of a pool kept for
Paddle alone (a slow Paddle fills it, not the loop's default executor, which DNS lookups
and other libraries share), with the SDK's own timeout set (PAYSTREAM_GATEWAY_TIMEOUT_SECONDS)
and its retries off (the pipeline owns retries; a create looks for what an earlier try
made first). A call given up on (the command's deadline) goes on in its thread until that
timeout: as a request whose answer was lost, which a create survives the same way.

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
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from paystream.gateways.errors import GatewayError
from paystream.gateways.paddle.errors import (
    PROVIDER,
    map_paddle_answer,
    map_transport_error,
    unreadable,
)

__all__ = ["PADDLE_THREADS", "PaddleClient"]

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
    ) -> dict[str, Any]:
        """Paddle's answer (``{"data": ..., "meta": ...}``), or a GatewayError."""
        loop = asyncio.get_running_loop()
        send = functools.partial(self._send, method, path, body, query)
        return await loop.run_in_executor(_executor(), send)

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


def _retry_after(exc: Any) -> float | None:
    value = getattr(exc, "retry_after", None)
    return float(value) if isinstance(value, int | float) and value > 0 else None
