"""Which Host headers an open worker (no PAYSTREAM_WEB_TOKEN) answers: DNS rebinding.

Without a token the views are open to whoever reaches the port, which the deployments
that run so keep on 127.0.0.1 or a private network. A web page an operator visits can
still reach it: its own domain, re-pointed at 127.0.0.1 after loading, makes the
browser send the page's requests there as same-origin, and read the answers (customers'
personal data). Those requests name the attacker's domain in Host; so an open worker
answers only Hosts that no outside page can own: an IP address, ``localhost``, a name
without a dot (a container or host name; public DNS names have dots), its own bind and
advertised hosts, and the names PAYSTREAM_WEB_ALLOWED_HOSTS lists. With a token the
check is moot: the browser does not send the operator's cookie to another origin.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["host_allowed", "host_name"]


def host_name(header: str) -> str:
    """The name in a Host header, without its port, lower case, without a final dot."""
    header = header.strip()
    if header.startswith("["):  # [v6]:port
        return header[1 : header.find("]")].lower() if "]" in header else ""
    name, sep, port = header.rpartition(":")
    if not sep or not port.isdigit() or ":" in name:
        name = header  # no port (or a bare IPv6 address)
    return name.lower().rstrip(".")


def host_allowed(header: str | None, named: Iterable[str]) -> bool:
    """May an open worker answer a request whose Host header is ``header``?"""
    if not header:
        return True  # HTTP/1.0 or a raw client: no browser sends a request without one
    name = host_name(header)
    if not name:
        return False
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    if name == "localhost" or name.endswith(".localhost") or "." not in name:
        return True  # (.localhost resolves to loopback in browsers: RFC 6761)
    return name in {n.lower().rstrip(".") for n in named if n}
