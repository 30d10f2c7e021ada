"""Reading a request's body with a bound on its size and on the time it may take.

aiohttp's own ``request.read()`` buffers up to the application's ``client_max_size``
(1 MiB) with no time limit, and a chunked body has no Content-Length to refuse early:
a hundred bodies trickled in slowly hold their handlers and their buffers for good.
"""

from __future__ import annotations

import asyncio

import aiohttp
import aiohttp.web

__all__ = ["BodyTooLarge", "BodyTooSlow", "BodyUnreadable", "ClientGone", "read_body"]

_READ_CHUNK = 64 * 1024


class BodyTooLarge(Exception):
    """The body is over the limit (said by its Content-Length, or read past it)."""


class BodyTooSlow(Exception):
    """The body did not arrive in time."""


class BodyUnreadable(Exception):
    """The body cannot be read as sent: a Content-Encoding that does not decode, a
    broken chunked encoding."""


class ClientGone(Exception):
    """The client closed the connection before its body was in."""


async def read_body(request: aiohttp.web.Request, limit: int, seconds: float) -> bytes:
    """The whole body, never buffering more than ``limit`` bytes of it."""
    if (request.content_length or 0) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(seconds):
            while chunk := await request.content.read(_READ_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTooSlow from None
    except aiohttp.web.RequestPayloadError:
        raise BodyUnreadable from None
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        raise ClientGone from None
    return b"".join(chunks)
