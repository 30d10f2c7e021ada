"""The Faust application. Imports no units: units import ``app`` (see worker.py)."""

from __future__ import annotations

import contextlib
from http.cookies import CookieError, SimpleCookie
from typing import Any

import aiohttp
import faust

from paystream import metrics
from paystream.settings import Settings, get_settings
from paystream.streams import backpressure, broker_compat, record_batches
from paystream.streams.faust_transport import PRODUCER_MAX_BATCH_SIZE, max_poll_records
from paystream.streams.kafka_auth import faust_credentials
from paystream.tables import faster_recovery, stale_stores
from paystream.web.http_limits import limit_faust_web
from paystream.web.route_errors import json_route_errors

__all__ = ["app", "create_app", "settings", "tables_settled"]

# A lookup forwarded to a partition's owner (Faust's topic_route): a hung owner must be
# answered 503 within seconds, not after aiohttp's default five minutes.
FORWARD_TIMEOUT_SECONDS = 5.0


# What a forwarded lookup passes on of the caller's headers: the owner checks the same
# token; nothing else (another service's cookies, a proxy's headers) leaves. Not the
# Host: the owner is asked under the name it advertises (the URL's), one it answers as
# its own; asked under the forwarding worker's name it would have to trust every name
# the group's members advertise, and anyone who can join the group can advertise one.
FORWARDED_HEADERS = ("Authorization", "Accept")
# Marks a lookup forwarded once: its receiver answers it or refuses it, never forwards it
# again (two workers each naming the other the owner, mid-rebalance, bounced it for ever).
FORWARDED_MARK = "Paystream-Forwarded"
TOKEN_COOKIE = "paystream_token"  # noqa: S105 - the cookie's name


class ForwardLoop(aiohttp.ClientError):
    """A forwarded lookup that this worker would forward again: answered 503 and retried
    (the workers disagree on who owns the tenant until the group settles)."""


class ForwardingClient:
    """Faust's HTTP client for lookups forwarded to a partition's owner (its
    ``HttpClient`` setting is called with no arguments; Faust calls ``request`` and
    ``close``). The caller's token goes as a bearer header, whether it came as one or
    as the dashboard's cookie, and no other of its headers but those the owner reads."""

    def __init__(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_SECONDS, sock_connect=1.0)
        )

    def request(self, method: str, url: Any, *, headers: Any = None, **kwargs: Any) -> Any:
        if headers is not None and FORWARDED_MARK in headers:
            raise ForwardLoop(f"a lookup forwarded to this worker would be forwarded to {url}")
        return self._session.request(method, url, headers=forwarded_headers(headers), **kwargs)

    async def close(self) -> None:
        await self._session.close()


def forwarded_headers(headers: Any) -> dict[str, str]:
    """The headers of a lookup as forwarded to its owner (see ForwardingClient). An
    Authorization of another scheme (an authenticating proxy's Basic) is not ours: the
    owner gets the dashboard cookie's token in its place, decoded as the worker reads it."""
    given = headers or {}
    out = {name: given[name] for name in FORWARDED_HEADERS if name in given}
    out[FORWARDED_MARK] = "1"
    if out.get("Authorization", "").partition(" ")[0].lower() != "bearer":
        out.pop("Authorization", None)
        token = _cookies(str(given.get("Cookie", ""))).get(TOKEN_COOKIE)
        if token:
            out["Authorization"] = f"Bearer {token}"
    return out


def _cookies(header: str) -> dict[str, str]:
    """A Cookie header's cookies, read as the worker's token check reads them (aiohttp's
    ``request.cookies``). SimpleCookie dropped them all at the first it did not like
    (another service's ``theme=dark mode`` on the same host), so a lookup forwarded to
    its owner lost the token the local check had accepted (review finding)."""
    try:
        from aiohttp._cookie_helpers import parse_cookie_header
    except ImportError:  # (an aiohttp before 3.12: its request.cookies is SimpleCookie's)
        cookies = SimpleCookie()
        with contextlib.suppress(CookieError):
            cookies.load(header)
        return {name: morsel.value for name, morsel in cookies.items()}
    return {name: morsel.value for name, morsel in parse_cookie_header(header)}


def forwarding_client() -> ForwardingClient:
    return ForwardingClient()


# Used only so that importing the app (for CLI help, schema export) never needs a broker;
# `paystream worker` refuses to start without KAFKA_BROKER_URL.
_UNCONFIGURED_BROKER = "kafka://127.0.0.1:9092"


def create_app(settings: Settings) -> faust.App:
    """Build the Faust app from settings; broker quirks are applied here and only here."""
    broker_compat.apply(settings)
    record_batches.install(settings)  # a batch aiokafka refuses must not stall a partition
    backpressure.install()  # before the conductor compiles its per-partition callbacks
    faster_recovery.install()
    stale_stores.install(lambda: settings.table_store_max_age_seconds)
    conf: dict[str, Any] = {
        "broker": settings.kafka_broker_url or _UNCONFIGURED_BROKER,
        "broker_credentials": faust_credentials(settings),
        "store": settings.table_store,
        "datadir": str(settings.data_dir / "faust" / settings.app_id),
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.replication_factor,
        "topic_allow_declare": True,
        "web_host": settings.web_host,
        "web_port": settings.web_port,
        "web_in_thread": False,
        # Faust's /table/{name}/{key}/ would serve any table's raw records (idempotency
        # records, customers' personal data, limits) to anyone reaching the port; the
        # entity views serve what operators need, one tenant's entity at a time.
        "web_tables_enabled": False,
        # Faust's /router/ pages list every worker, topic and partition to anyone (and a
        # name it does not know is a 500 with a logged traceback); nothing here uses them.
        "web_router_enabled": False,
        # JSON for a path or method no view serves, as for every other error.
        "web_application_options": {"middlewares": [json_route_errors]},
        "HttpClient": forwarding_client,
        "autodiscover": False,
        "key_serializer": "raw",
        "value_serializer": "raw",
        "consumer_auto_offset_reset": "earliest",
        # Outcomes must be durable before a command's offset is committed.
        "producer_acks": -1,
        "producer_linger_ms": 1,
        # (streams/faust_transport.py: one record batch per topic-partition of a batch)
        "producer_max_batch_size": PRODUCER_MAX_BATCH_SIZE,
        # How long a produced record batch may take, aiokafka's own retries included,
        # before it fails (also the ProduceRequest's timeout on the broker). Faust's 1200 s
        # kept a batch the broker refused (NOT_ENOUGH_REPLICAS, ...) in aiokafka's retries
        # for 20 minutes, where the command agent could not see why it was stalled.
        "producer_request_timeout": settings.producer_request_timeout_seconds,
        "stream_wait_empty": False,
        "stream_buffer_maxsize": settings.stream_buffer_maxsize,
        "broker_max_poll_records": max_poll_records(settings.stream_buffer_maxsize),
        "table_standby_replicas": 1,
        "logging_config": None,
        # Faust lets an environment variable override any of the above: generic names
        # (WEB_HOST, BROKER_URL, PRODUCER_ACKS, PROCESSING_GUARANTEE, TIMEZONE, APP_DEBUG,
        # APP_WEB_TABLES_ENABLED, ...) that a shared config map or a platform may set
        # for something else. APP_WEB_TABLES_ENABLED=1 brought back the raw table pages,
        # customers' records to anyone reaching the port (review finding). paystream's
        # settings (PAYSTREAM_*) are the only configuration.
        "env": {},
    }
    conf.update(broker_compat.faust_overrides(settings))
    app = faust.App(settings.app_id, **conf)
    metrics.REBALANCES.track(app)
    return app


settings: Settings = get_settings()
app: faust.App = create_app(settings)
limit_faust_web(app.web, settings.web_max_connections)


def tables_settled() -> bool:
    """No rebalance under way, and this worker's active table partitions recovered
    (Faust ends a rebalance only once recovery is done)."""
    return not app.rebalancing and bool(getattr(app.tables, "actives_ready", True))
