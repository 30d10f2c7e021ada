"""Limits on what a connection to either web server (a worker's Faust web, `paystream
ingress`) may hold before its request is read.

aiohttp's defaults keep a connection that has sent part of its request headers open for
an hour (``keepalive_timeout`` 3630 s, counted from the connection's start while no
request is read) and let it hold 128 header lines of 8 KiB: a peer with no credential
held ~1 MiB a connection, 188 MiB for 100 of them (review finding). An idle or
half-sent connection now goes after 75 s (longer than the usual proxy's idle timeout, so
that a proxy reusing a connection does not find it closed under it), with at most 64
header lines. Connections themselves are not counted here: put the servers behind a
proxy or load balancer that limits them (the chart's Ingress, a cloud load balancer).
"""

from __future__ import annotations

from typing import Any

__all__ = ["HANDLER_LIMITS", "limit_faust_web"]

HANDLER_LIMITS: dict[str, Any] = {"keepalive_timeout": 75.0, "max_headers": 64}


def limit_faust_web(web: Any) -> None:
    """Give a Faust web driver's aiohttp runner the limits, before it starts: Faust
    makes it with aiohttp's defaults and takes no options for it (its ``_runner`` holds
    the keyword arguments it hands the request handlers at setup)."""
    runner = web._runner
    runner._kwargs.update(HANDLER_LIMITS)
