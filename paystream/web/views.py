"""Worker web routes: dashboard, JSON views over the tables, Prometheus /metrics."""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any

import aiohttp
import aiohttp.web
from faust.exceptions import ConsumerNotStarted
from faust.web import Request, Response, View
from faust.web.exceptions import ServiceUnavailable
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from paystream import metrics
from paystream.agents import insights, parked_backlog
from paystream.agents.commands import PUBLISH_RETRY_MAX_SECONDS, runner
from paystream.agents.ledger_sink import AGENT_NAME as OUTCOMES_AGENT
from paystream.agents.ledger_sink import runner as ledger_runner
from paystream.agents.offsets import Stall, stalls
from paystream.agents.publish_health import PUBLISH, PublishTrouble
from paystream.agents.tenants import registry
from paystream.app import TOKEN_COOKIE, ForwardLoop, app, settings
from paystream.money import minor_unit_exponent
from paystream.streams.topics import commands_topic
from paystream.tables import definitions as t
from paystream.tables import observed
from paystream.tables.commands_view import command_view
from paystream.tables.views import TENANT_RECENT_KEPT, SummaryCache, entity_view
from paystream.tenancy.models import TENANT_ID_PATTERN
from paystream.web.bearer import bearer, matches
from paystream.web.hosts import host_allowed, host_well_formed
from paystream.web.liveness import LivenessWatch
from paystream.web.tenant_rows import TenantRows

__all__ = [
    "DashboardView",
    "EntityView",
    "MetricsView",
    "StatsView",
    "TenantOutcomesView",
]

_STARTED = time.time()
observed.install(app)  # table sizes and recovery progress on /metrics
_liveness = LivenessWatch()
_summaries = SummaryCache()
_ENTITY_TABLES = {
    "customers": t.customers,
    "payment_methods": t.payment_methods,
    "payments": t.payments,
    "refunds": t.refunds,
    "disputes": t.disputes,
    "subscriptions": t.subscriptions,
    "invoices": t.invoices,
    "payouts": t.payouts,
    "tax_rates": t.tax_rates,
    "tax_calculations": t.tax_calculations,
    "connected_accounts": t.connected_accounts,
    "transfers": t.transfers,
}
# What a lookup may name: an entity's kind, or "commands" (what became of a command).
_KINDS = frozenset({*_ENTITY_TABLES, "commands"})


_Handler = Callable[..., Awaitable[Response]]


def _bears_token(request: Request) -> bool:
    """Does the request carry the operators' token (if one is configured)?"""
    if settings.web_token is None:
        return True
    scheme = request.headers.get("Authorization", "").partition(" ")[0]
    if scheme.lower() == "bearer":  # (an empty one too: no fallback to the cookie)
        return matches(bearer(request.headers), settings.web_token)
    # A browser: the cookie opening /?token= gave it.
    return matches(request.cookies.get(TOKEN_COOKIE), settings.web_token)


def _may_scrape(request: Request) -> bool:
    """/metrics: PAYSTREAM_METRICS_TOKEN (a scraper's, which opens nothing else) or the
    operators' token; open as the views are when neither is configured."""
    if settings.metrics_token is None:
        return _bears_token(request)
    if matches(bearer(request.headers), settings.metrics_token):
        return True
    return settings.web_token is not None and _bears_token(request)


@functools.cache
def _named_hosts() -> frozenset[str]:
    return settings.web_host_names()  # (the advertised host may take a DNS lookup)


def _refused_host(view: View, request: Request) -> Response | None:
    """400 for a Host header that is no host[:port]; 403 for an open worker (no token)
    asked under a name a web page could own."""
    host = request.headers.get("Host")
    if not host_well_formed(host):
        return view.json(
            {"error": "bad_host", "message": "the Host header is not a host[:port]"}, status=400
        )
    if settings.web_token is not None:
        return None
    if host_allowed(host, _named_hosts()):
        return None
    return view.json(
        {
            "error": "host_not_allowed",
            "message": "without PAYSTREAM_WEB_TOKEN this worker answers only addresses, "
            "localhost and PAYSTREAM_WEB_ALLOWED_HOSTS",
        },
        status=403,
    )


def _over_https(request: Request) -> bool:
    """Did the browser use HTTPS? Behind a TLS-terminating proxy (ingress, load balancer)
    the worker itself sees plain HTTP: the proxy's X-Forwarded-Proto or Forwarded says.
    Believing a client's claim is safe here: it only adds Secure to the cookie, which a
    browser then keeps for HTTPS alone."""
    if getattr(request, "secure", False):
        return True
    forwarded_proto = request.headers.get("X-Forwarded-Proto", "")
    if forwarded_proto.split(",")[0].strip().lower() == "https":
        return True
    first_hop = request.headers.get("Forwarded", "").split(",")[0]
    return any(
        part.strip().lower().replace('"', "") == "proto=https" for part in first_hop.split(";")
    )


def _guarded(may: Callable[[Request], bool], needed: str) -> Callable[[_Handler], _Handler]:
    """Answers only requests ``may`` lets through (401 naming what is ``needed``), under a
    Host header it answers (_refused_host), with nothing a cache may keep."""

    def guard(fun: _Handler) -> _Handler:
        @functools.wraps(fun)
        async def answer(view: View, request: Request, *args: Any, **kwargs: Any) -> Response:
            if (refused := _refused_host(view, request)) is not None:
                return refused
            if not may(request):
                return view.json(
                    {"error": "unauthorized", "message": f"{needed} required"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="paystream"'},
                )
            response = await fun(view, request, *args, **kwargs)
            # Personal data and the fleet's figures: no proxy or browser cache keeps a copy.
            response.headers["Cache-Control"] = "no-store"
            return _hardened(response, _DATA_POLICY)

        return answer

    return guard


# Entity lookups carry customers' personal data: with PAYSTREAM_WEB_TOKEN set, only
# requests bearing it are answered (a lookup forwarded to the tenant's owner carries the
# caller's headers, so the owner checks the same token).
_operators_only = _guarded(_bears_token, "PAYSTREAM_WEB_TOKEN")
_scrapers_too = _guarded(_may_scrape, "PAYSTREAM_METRICS_TOKEN or PAYSTREAM_WEB_TOKEN")


# Data (JSON, metrics) is never a page: nothing in it may run, load or be framed.
_DATA_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


def _hardened(response: Response, policy: str) -> Response:
    """Defence in depth behind the page's escaping: a Content-Security-Policy, no type
    sniffing (a body is what its content type says), no referrer, no framing."""
    response.headers["Content-Security-Policy"] = policy
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    return response


@functools.cache
def _dashboard() -> tuple[str, str]:
    """The dashboard page and its policy: only its own inline script and style run (by
    their sha256), it fetches only from this worker, and nothing frames it."""
    html = resources.files("paystream.web").joinpath("static/dashboard.html").read_text()
    sources = {
        kind: " ".join(
            f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
            for body in re.findall(rf"<{kind}>(.*?)</{kind}>", html, re.DOTALL)
        )
        or "'none'"
        for kind in ("script", "style")
    }
    policy = (
        f"default-src 'none'; script-src {sources['script']}; style-src {sources['style']}; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )
    return html, policy


TOKEN_COOKIE_MAX_AGE_SECONDS = 12 * 3600


@app.page("/")
class DashboardView(View):
    """The operator dashboard (static page polling /v1/stats)."""

    async def get(self, request: Request) -> Response:
        token = request.query.get("token")
        if token is not None and settings.web_token is not None:
            # A browser opens /?token=...: it gets the token as a cookie its polls send,
            # and the address bar (and history) loses it.
            valid = matches(token, settings.web_token)
            found = aiohttp.web.Response(status=303, headers={"Location": "/"})
            if valid:
                found.set_cookie(
                    TOKEN_COOKIE,
                    token,
                    httponly=True,
                    samesite="Strict",
                    secure=_over_https(request),
                    # Browsers send a host's cookies to every port of it (another local
                    # service too): a working day's, not a session's for weeks.
                    max_age=TOKEN_COOKIE_MAX_AGE_SECONDS,
                )
            return found  # type: ignore[return-value]  # aiohttp's, as Faust's driver uses
        if (refused := _refused_host(self, request)) is not None:
            return refused
        if not _bears_token(request):
            return self.text(
                "paystream: open /?token=<PAYSTREAM_WEB_TOKEN> to see the dashboard\n",
                status=401,
            )
        html, policy = _dashboard()
        return _hardened(self.html(html), policy)


@app.page("/metrics")
class MetricsView(View):
    @_scrapers_too
    async def get(self, request: Request) -> Response:
        return self.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])


@app.page("/healthz")
class HealthView(View):
    """For a liveness probe: 503 while the command agent is wedged (behind, with no
    progress for PAYSTREAM_LIVENESS_STALL_SECONDS, not counting time spent settling), or
    the worker has been rebalancing (not recovering tables) for
    PAYSTREAM_LIVENESS_SETTLING_SECONDS without a break, so that the worker is restarted
    and its partitions move to a peer meanwhile."""

    async def get(self, request: Request) -> Response:
        refused = _observe_settling()
        stalled = stalls(metrics.PROGRESS.tracked(), 0.0) if settings.runs("commands") else []
        failing = _liveness.failures(
            stalled,
            after=settings.liveness_after,
            settling_after=settings.liveness_settling_seconds if settings.liveness_after else 0,
        )
        body = {
            "ok": not failing,
            "uptime_s": round(time.time() - _STARTED, 1),
            "failing": failing,
            # Why a stall is not failing liveness: a restart would not mend it.
            "excused": [refused.describe()] if refused is not None else [],
        }
        return self.json(body, status=503 if failing else 200)


def _observe_settling() -> PublishTrouble | None:
    """Tell the liveness watch, whichever probe asks, whether the worker is settling
    (rebalancing, recovering tables, reading the registry), with its consumer generation,
    and whether the broker is refusing the command agent's writes (returned, if so)."""
    recovering = bool(getattr(app, "in_recovery", False))
    settling = bool(app.rebalancing or recovering or not registry.ready.is_set())
    refused = PUBLISH.refused_within(REFUSAL_FRESH_SECONDS)
    _liveness.observe(
        settling=settling,
        generation=app.consumer_generation_id,
        rebalancing=bool(app.rebalancing) and not recovering,
        refused=refused is not None,
    )
    return refused


# A refusing broker fails each retried batch again within a producer request timeout
# (and the retry's pause): a refusal older than two of those is no longer the reason.
REFUSAL_FRESH_SECONDS = 2 * (settings.producer_request_timeout_seconds + PUBLISH_RETRY_MAX_SECONDS)


@app.page("/readyz")
class ReadyView(View):
    """For a readiness probe: 503 until the worker can run commands (tenant registry read
    to its end, partitions of its source topic assigned, not rebalancing), and while its
    source agent is stalled (behind, with no progress for PAYSTREAM_STALL_SECONDS).
    Every stalled agent is listed under ``stalled``: a ledger sink waiting on its
    database does not stop commands, so it does not make the worker unready."""

    async def get(self, request: Request) -> Response:
        _observe_settling()
        trouble = PUBLISH.trouble() if settings.runs("commands") else None
        stalled = stalls(metrics.PROGRESS.tracked(), settings.stall_seconds)
        source = "commands" if settings.runs("commands") else OUTCOMES_AGENT
        waiting = not_ready_because(
            registry_loaded=registry.ready.is_set(),
            partitions=len(_assigned()),
            rebalancing=bool(app.rebalancing),
            recovering=bool(getattr(app, "in_recovery", False)),
            stalled=stalled,
            source=source,
        )
        body = {
            "ready": not waiting,
            "waiting_for": waiting,
            "stalled": [
                {"agent": s.agent, "behind": s.behind, "seconds": round(s.seconds, 1)}
                for s in stalled
            ],
            # Producing the command agent's batches failing now (retried meanwhile).
            "publish_failing": trouble.describe() if trouble is not None else None,
        }
        return self.json(body, status=503 if waiting else 200)


def not_ready_because(
    *,
    registry_loaded: bool,
    partitions: int,
    rebalancing: bool,
    recovering: bool = False,
    stalled: Sequence[Stall] = (),
    source: str = "commands",
) -> list[str]:
    """What a worker still waits for before it is ready; empty when ready. Only its
    ``source`` agent's stall counts: a ledger sink waiting on its database does not stop
    commands, and taking every worker out of service for it would."""
    waiting = []
    if not registry_loaded:
        waiting.append("tenant registry")
    if partitions == 0:
        waiting.append("partition assignment")
    if rebalancing:
        waiting.append("rebalance")
    if recovering:
        waiting.append("table recovery")
    waiting += [stall.describe() for stall in stalled if stall.agent == source]
    return waiting


def _assigned() -> list[int]:
    """The partitions this worker owns of its source topic (commands, or events for a
    ledger-only worker): what an operator needs to find a tenant's worker."""
    source = settings.commands_topic if settings.runs("commands") else settings.events_topic
    if not app.consumer:
        return []
    try:
        assignment = app.consumer.assignment()
    except ConsumerNotStarted:
        # Faust serves the web views before its consumer thread starts: none yet, rather
        # than a 500 and a traceback from /readyz (review finding).
        return []
    return sorted(tp.partition for tp in assignment if tp.topic == source)


_tenant_rows = TenantRows()


@app.page("/v1/stats")
class StatsView(View):
    """Counts, recent outcomes, per-tenant summaries and this worker's partitions."""

    @_operators_only
    async def get(self, request: Request) -> Response:
        assigned = _assigned()
        activity = runner.activity.as_json()
        # Tables recovering: they hold what was replayed so far, and the summaries count
        # that much (review h68d).
        settling = bool(getattr(app, "in_recovery", False))
        # The payments table is partitioned as the source topic: its owned partitions'.
        summaries = await _summaries.get(t.payments, frozenset(assigned))
        if settling:
            _summaries.expire()  # (partial figures: not kept past the recovery)
        shown_insights = None if insights.runner is None else insights.runner.as_json()
        tenants, omitted = _tenant_rows.shown(
            registry.tenants, registry.changes, (*activity["by_tenant"], *summaries)
        )
        # The page lists ``tenants`` and ``by_tenant``: a registered tenant left out of
        # the rows is left out of the counts too, else it is listed as "unknown" and the
        # answer grows with every tenant served (review h68d).
        activity["by_tenant"] = _listed(activity["by_tenant"], tenants)
        summaries = _listed(summaries, tenants)
        return self.json(
            {
                "worker": {
                    "app_id": settings.app_id,
                    "uptime_s": round(time.time() - _STARTED, 1),
                    "partitions": assigned,
                    "processed": runner.processed,
                    "ledger_processed": ledger_runner.processed,
                    "tables_recovering": settling,
                },
                "activity": activity,
                # What waits on the retry and dead-letter topics for a replay (every
                # worker's: the topics are the fleet's), None until measured.
                "parked_backlog": parked_backlog.as_json(),
                # Analytics windows and fraud alerts this worker published (None: it
                # does not run the insights).
                "insights": shown_insights,
                # The registry's tenants (status, gateway, limits): at most
                # TENANTS_SHOWN_MAX, those this worker served first; how many are left out.
                "tenants": tenants,
                "tenants_omitted": omitted,
                "summaries": summaries,
                # Amounts are in minor units: the digits after the point per currency
                # shown, so that the page shows 25.00 USD, not 2500 USD.
                "minor_units": _minor_units(activity, summaries, shown_insights),
            }
        )


def _listed(by_name: dict[str, Any], rows: dict[str, Any]) -> dict[str, Any]:
    """``by_name``'s entries the page may list: the tenants with a row, and names the
    registry does not hold (shown as such)."""
    held = registry.tenants
    return {name: v for name, v in by_name.items() if name in rows or name not in held}


def _minor_units(
    activity: dict[str, Any], summaries: dict[str, Any], shown_insights: dict[str, Any] | None
) -> dict[str, int]:
    """Each currency shown on the page, with its ISO 4217 minor-unit digits."""
    shown = {e.get("currency") for e in activity.get("recent", ())}
    for summary in summaries.values():
        for totals in (summary.get("captured"), summary.get("refunded")):
            shown.update(totals or ())
    for window in (shown_insights or {}).get("windows", {}).values():
        shown.update(window.get("money") or ())
        shown.update(window.get("disputes") or ())  # (a dispute's currency, money or not)
        shown.update(window.get("subscriptions") or ())  # (invoices', likewise)
        shown.update(window.get("payouts") or ())  # (payouts', likewise)
        shown.update(window.get("tax_collected") or ())
        shown.update(window.get("application_fees") or ())
        shown.update(window.get("transfers") or ())
    units: dict[str, int] = {}
    for code in shown:
        try:
            units[str(code)] = minor_unit_exponent(str(code))
        except (KeyError, ValueError):
            continue  # not a currency this version knows: shown in minor units
    return units


_TENANT_ID = re.compile(TENANT_ID_PATTERN)


def _tenant_id_shaped(fun: _Handler) -> _Handler:
    """A lookup under what can be no tenant's id answers 404 here, before it is forwarded:
    table keys are "<tenant>:<id>", so "globex:x" with the idempotency key "k" read
    globex's record of key "x:k" and showed it as tenant "globex:x" (review h60f)."""

    @functools.wraps(fun)
    async def answer(view: View, request: Request, *args: Any, **kwargs: Any) -> Response:
        tenant = kwargs.get("tenant")
        kind = kwargs.get("kind")  # (None: a tenant's outcomes, no entity)
        if not isinstance(tenant, str) or _TENANT_ID.fullmatch(tenant) is None:
            what = "tenant" if kind is None else kind[:-1] if kind in _KINDS else "entity"
            return view.json({"error": "not_found", "message": f"no such {what}"}, status=404)
        if kind is not None and kind not in _KINDS:
            # Answered here, not forwarded, and not quoted: it may be anything, a card
            # number too (review h64b: quoted whole, unredacted, at any length).
            kinds = ", ".join([*sorted(_ENTITY_TABLES), "commands"])
            return view.json(
                {"error": "not_found", "message": f"unknown kind; kinds: {kinds}"}, status=404
            )
        return await fun(view, request, *args, **kwargs)

    return answer


def _owner_unreachable_is_503(fun: _Handler) -> _Handler:
    """A lookup forwarded to the tenant's owner that cannot reach it (the owner died and
    the group has not yet noticed) answers 503 with Retry-After, as a lookup during a
    rebalance does, instead of a plain-text 500; and a 503 forwarded from the owner keeps
    its Retry-After (Faust re-wraps forwarded answers without their headers)."""

    @functools.wraps(fun)
    async def answer(view: View, request: Request, *args: Any, **kwargs: Any) -> Response:
        try:
            response = await fun(view, request, *args, **kwargs)
        except ForwardLoop:
            # Forwarded here, and this worker names yet another owner: the group is
            # settling (answered as a lookup before any assignment is).
            status, body, headers = owner_unknown()
            return view.json(body, status=status, headers=headers)
        except (aiohttp.ClientError, TimeoutError):
            status, body, headers = owner_unreachable()
            return view.json(body, status=status, headers=headers)
        except ServiceUnavailable:
            # Faust's router knows no owner yet (no assignment since the worker started,
            # about 4 s): its own answer had neither our shape nor Retry-After.
            status, body, headers = owner_unknown()
            return view.json(body, status=status, headers=headers)
        if response.content_type != "application/json":
            # Our views answer JSON: anything else came from a peer that is no paystream
            # worker (a stale assignment's address reused), and must not be served on
            # the dashboard's origin (text/html would run there).
            status, body, headers = owner_not_json()
            return view.json(body, status=status, headers=headers)
        if response.status == 503 and "Retry-After" not in response.headers:
            response.headers["Retry-After"] = "1"
        return response

    return answer


def owner_not_json() -> tuple[int, dict[str, str], dict[str, str]]:
    body = {
        "error": "bad_gateway",
        "message": "the worker owning this tenant answered something other than JSON; retry",
    }
    return 502, body, {"Retry-After": "1"}


def owner_unreachable() -> tuple[int, dict[str, str], dict[str, str]]:
    body = {
        "error": "unavailable",
        "message": "the worker owning this tenant is unreachable; retry",
    }
    return 503, body, {"Retry-After": "1"}


def owner_unknown() -> tuple[int, dict[str, str], dict[str, str]]:
    body = {
        "error": "unavailable",
        "message": "partitions are being assigned: no worker owns this tenant yet; retry",
    }
    return 503, body, {"Retry-After": "1"}


@app.page("/v1/tenants/{tenant}/{kind}/{entity_id}")
class EntityView(View):
    """Look up one entity (payment, refund, ...) of one tenant.

    In a fleet the tenant's tables live on the worker that owns its partition of the
    commands topic; asked elsewhere, this worker fetches the answer from that one (Faust's
    topic routing) instead of answering "not found".
    """

    @_operators_only
    @_owner_unreachable_is_503
    @_tenant_id_shaped
    @app.topic_route(commands_topic, match_info="tenant")  # type: ignore[arg-type]
    async def get(self, request: Request, tenant: str, kind: str, entity_id: str) -> Response:
        if getattr(app, "in_recovery", False):
            # Mid-recovery a row found is what the changelog replayed so far (a payment
            # "authorized" whose capture is not yet applied): as much a guess as a miss
            # (review h68d; the webhooks do not read the tables then either).
            status, body, headers = missing_entity(kind, settling=True)
            return self.json(body, status=status, headers=headers)
        if kind == "commands":  # what became of a command (by idempotency key or id)
            found = command_view(t.idempotency, tenant, entity_id, time.time())
        else:  # (a kind of entity: _tenant_id_shaped answered any other)
            found = entity_view(_ENTITY_TABLES[kind], tenant, entity_id)
        if found is None:
            settling = bool(app.rebalancing or getattr(app, "in_recovery", False))
            status, body, headers = missing_entity(kind, settling=settling)
            return self.json(body, status=status, headers=headers)
        return self.json(found)


@app.page("/v1/tenants/{tenant}/outcomes")
class TenantOutcomesView(View):
    """A tenant's latest outcomes, newest first: the dashboard's "Recent outcomes" of one
    tenant (the last 50 of all tenants pushed a command sent by hand out within seconds,
    review h77c). Kept by the worker that ran them, since it took the tenant over (dropped
    when its partition moves away): asked elsewhere, this worker fetches them from the one
    owning the tenant's partition, as a lookup."""

    @_operators_only
    @_owner_unreachable_is_503
    @_tenant_id_shaped
    @app.topic_route(commands_topic, match_info="tenant")  # type: ignore[arg-type]
    async def get(self, request: Request, tenant: str) -> Response:
        recent = runner.activity.recent_of(tenant)
        return self.json(
            {
                "tenant": tenant,
                "recent": recent,
                "kept": TENANT_RECENT_KEPT,  # at most this many, the latest
                "minor_units": _minor_units({"recent": recent}, {}, None),
            }
        )


def missing_entity(
    kind: str, *, settling: bool
) -> tuple[int, dict[str, str], dict[str, str] | None]:
    """The answer for an entity the tables do not hold: (status, body, headers).

    While partitions move or tables are recovered the tables may not hold everything
    yet, so "not found" would be a guess: 503 with Retry-After, and clients retry.
    """
    if settling:
        body = {"error": "unavailable", "message": "tables are being recovered; retry"}
        return 503, body, {"Retry-After": "1"}
    return 404, {"error": "not_found", "message": f"no such {kind[:-1]}"}, None
