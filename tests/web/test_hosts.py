"""The Host headers an open worker (no PAYSTREAM_WEB_TOKEN) answers: DNS rebinding."""

from __future__ import annotations

import pytest

from paystream.errors import ConfigurationError
from paystream.settings import load_settings
from paystream.web.hosts import host_allowed, host_name


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:6066", "127.0.0.1"),
        ("[::1]:6066", "::1"),
        ("::1", "::1"),
        ("Worker-1:6066", "worker-1"),
        ("dash.example.com.", "dash.example.com"),
        ("[::1", ""),
    ],
)
def test_host_name(header: str, name: str) -> None:
    assert host_name(header) == name


@pytest.mark.parametrize(
    "header",
    [
        "127.0.0.1:6066",
        "10.0.3.7:6066",  # a pod's address (Prometheus scraping it)
        "[::1]:6066",
        "localhost:6066",
        "paystream.localhost",  # loopback in browsers (RFC 6761)
        "worker-1:6066",  # a compose service name
        "dash.internal.example:6066",  # listed
        "DASH.internal.example.",
        None,  # no Host: no browser
    ],
)
def test_names_no_outside_page_can_own_are_answered(header: str | None) -> None:
    assert host_allowed(header, ["dash.internal.example"])


@pytest.mark.parametrize(
    "header",
    [
        "rebind.attacker.example:6066",
        "127.0.0.1.nip.io:6066",  # a public name for a loopback address
        "localhost.attacker.example",
        "[::1",
        ":6066",
    ],
)
def test_a_public_name_is_refused(header: str) -> None:
    assert not host_allowed(header, ["dash.internal.example"])


def test_the_workers_own_hosts_and_the_listed_ones() -> None:
    s = load_settings(
        web_host="0.0.0.0",
        web_advertised_host="w1.paystream.svc.cluster.local",
        web_allowed_hosts="dash.example.com, ops.example.com",
    )
    names = s.web_host_names()
    assert {"w1.paystream.svc.cluster.local", "dash.example.com", "ops.example.com"} <= names
    assert host_allowed("w1.paystream.svc.cluster.local:6066", names)


def test_allowed_hosts_are_names_only() -> None:
    with pytest.raises(ConfigurationError, match="web_allowed_hosts"):
        load_settings(web_allowed_hosts="*")


def test_a_forwarded_lookup_is_asked_under_its_owners_own_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lookup forwarded to the tenant's owner goes without the caller's Host, so the
    owner is asked under the name it advertises (the URL's), which it answers. Names the
    group's other members advertise are not answered: anyone who can join the group
    could advertise one (a rebound domain among them)."""
    from aiohttp import web
    from multidict import CIMultiDict

    from paystream.app import app, forwarded_headers
    from paystream.web import views

    class StandInView:
        def json(self, body: object, *, status: int) -> web.Response:
            return web.json_response(body, status=status)

    class Request:
        def __init__(self, host: str) -> None:
            self.headers = {"Host": host}

    assert "Host" not in forwarded_headers(CIMultiDict({"Host": "worker-a.example:6066"}))
    own = views.settings.model_copy(
        update={"web_token": None, "web_advertised_host": "worker-b.internal.example"}
    )
    monkeypatch.setattr(views, "settings", own)
    views._named_hosts.cache_clear()
    try:
        asked = Request("worker-b.internal.example:6066")  # the owner's own name
        assert views._refused_host(StandInView(), asked) is None  # type: ignore[arg-type]
        assignor = app.assignor
        before = assignor.changelog_distribution  # type: ignore[attr-defined]
        assignor.changelog_distribution = {  # type: ignore[attr-defined]
            "http://worker-a.internal.example:6066": {},
            "http://rebind.attacker.example:6066": {},
        }
        try:
            for peer in ("worker-a.internal.example:6066", "rebind.attacker.example:6066"):
                refused = views._refused_host(StandInView(), Request(peer))  # type: ignore[arg-type]
                assert refused is not None and refused.status == 403
        finally:
            assignor.changelog_distribution = before  # type: ignore[attr-defined]
    finally:
        views._named_hosts.cache_clear()


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("w1", True), ("w1:6066", True), ("10.0.0.7:6066", True), ("[::1]:6066", True),
        ("[::1]", True), ("::1", False), ("worker-a.example.:6066", True), (None, True),
        ("w1:99999", False), ("w1:0", False), ("w1:", False), ("w1:x", False),
        ("u:p@w1", False), ("w1/x", False), ("w 1", False), ("[::1", False),
        ("[::1]x", False), ("[nope]:1", False), (":6066", False), ("a:b:c", False),
        ("x[", False), ("a[b", False), ("a\u200db", False), ("a\u00adb", False),
        ("a%zz", False), ("a%41b:80", True), ("xn--bcher-kva.example", True),
    ],
)  # fmt: skip
def test_a_host_header_must_be_a_host_and_a_port(header: str | None, ok: bool) -> None:
    """And one taken builds the URL Faust forwards a lookup under (review finding: "x["
    passed, and the lookup was a 500 with a traceback logged)."""
    import yarl

    from paystream.web.hosts import host_well_formed

    assert host_well_formed(header) is ok
    if ok and header:
        yarl.URL.build(scheme="http", authority=header)
