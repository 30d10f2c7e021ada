"""What both web servers (a worker's Faust web, `paystream ingress`) answer for a path or
method they do not serve, and the name they give in ``Server``.

aiohttp's own answers are ``text/plain`` ("404: Not Found"): a client of a JSON API reads
every error as JSON. And its default ``Server: Python/3.11 aiohttp/3.x`` tells a scanner
which versions to try.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp.web
import aiohttp.web_response

from paystream.streams.pan import redact_card_numbers

__all__ = ["SERVER_NAME", "json_route_errors", "name_the_server"]

SERVER_NAME = "paystream"
# How much of a path or method an answer quotes.
_QUOTED_MAX = 200

Handler = Callable[[aiohttp.web.Request], Awaitable[aiohttp.web.StreamResponse]]


@aiohttp.web.middleware
async def json_route_errors(
    request: aiohttp.web.Request, handler: Handler
) -> aiohttp.web.StreamResponse:
    try:
        return await handler(request)
    except aiohttp.web.HTTPNotFound as exc:
        if exc.text and exc.text != "404: Not Found":
            raise  # (a view's own 404, with its body)
        return aiohttp.web.json_response(
            # (Card numbers redacted, as in every refusal that quotes what was sent: a
            # proxy may record responses; review finding.)
            {"error": "not_found", "message": f"no such path: {_quoted(request.path)}"},
            status=404,
        )
    except aiohttp.web.HTTPMethodNotAllowed as exc:
        return aiohttp.web.json_response(
            {"error": "method_not_allowed", "message": f"{_quoted(request.method)} is not taken"},
            status=405,
            headers={"Allow": ", ".join(sorted(exc.allowed_methods))},
        )


def name_the_server() -> None:
    """Every answer's ``Server`` header, the HTTP parser's own 400s too: aiohttp reads
    this when it writes a response's headers."""
    aiohttp.web_response.SERVER_SOFTWARE = SERVER_NAME


def _quoted(sent: str) -> str:
    """What a client sent, as an answer may quote it: cut, card numbers redacted (cut
    first, so a number is not split out of its pattern; cut again, a redaction's mark
    may be longer than what it replaced)."""
    return redact_card_numbers(sent[: _QUOTED_MAX + 32])[:_QUOTED_MAX]
