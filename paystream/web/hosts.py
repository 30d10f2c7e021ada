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
import re
from collections.abc import Iterable

__all__ = ["host_allowed", "host_name", "host_well_formed"]


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


def host_well_formed(header: str | None) -> bool:
    """Is ``header`` a host and an optional port (1-65535), as a Host header must be?
    Faust forwards a lookup to its owner under the URL built from it: a port out of range
    or credentials (``user:pass@``) made that a 500 with a traceback logged per request,
    on every worker, whatever its token (review finding)."""
    if not header:
        return True
    header = header.strip()
    if any(c in header for c in "@/\\?#") or any(c.isspace() for c in header):
        return False
    if header.startswith("["):
        end = header.find("]")
        rest = header[end + 1 :] if end > 0 else None
        if rest is None or (rest and not rest.startswith(":")):
            return False
        try:
            ipaddress.IPv6Address(header[1:end])
        except ValueError:
            return False
        port = rest[1:] if rest else None
    elif header.count(":") > 1:
        # A bare IPv6 address is no Host (RFC 3986 brackets it), and the URL Faust
        # forwards a lookup under would not build from it (review finding).
        return False
    else:
        name, sep, after = header.partition(":")
        if _REG_NAME.fullmatch(name) is None:
            # "x[", a zero-width joiner or soft hyphen in it: the URL Faust forwards a
            # lookup under would not build (review finding). Browsers send IDNs punycoded.
            return False
        port = after if sep else None
    return port is None or (port.isdigit() and 0 < int(port) <= 65535)


# RFC 3986 reg-name (unreserved, pct-encoded and sub-delims), as a Host header's name.
_REG_NAME = re.compile(r"(?:[A-Za-z0-9._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})+")
