"""A crash run against a provider (tests/e2e/test_stripe_crash.py: localstripe;
tests/e2e/test_square_crash.py: the FAKE Square): a proxy between the workers and the
provider SIGKILLs the worker of the moment once the provider has run a chosen POST and
before its answer returns, so that the command is certain to be redelivered; a worker
is started in its place after each kill, until every command has its outcome."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any

import aiohttp
from aiohttp import web
from cloudevents.core.v1.event import CloudEvent
from multidict import CIMultiDict

from paystream.streams.codec import decode_record
from tests.e2e.test_crash import OutcomeLog, _produce, _wait_for
from tests.fixtures.pipeline import Deployment

__all__ = ["Cut", "KillingProxy", "Post", "decode_outcome", "outcome_kind", "through_the_cuts"]

# A POST the proxy recorded (``KillingProxy.posts``): its ``path``, request ``headers``,
# JSON ``body`` ({} for another body), idempotency ``key``, the provider's ``status``,
# ``answer`` (bytes) and ``answer_headers``.
Post = dict[str, Any]
# Which POSTs a cut counts (a predicate over a recorded POST), and the how-many-th of
# those it kills at.
Cut = tuple[Callable[[Post], bool], int]


class KillingProxy:
    """Forwards the workers' calls to the provider at ``upstream`` (only the request
    headers named in ``forward``), on a loop of its own, recording each POST (``posts``;
    its idempotency key as ``key_of`` reads it from the recorded POST) and SIGKILLing
    the last of ``workers`` (the worker of the moment) once the ``nth`` POST the next of
    ``cuts`` matches has run at the provider, before its answer goes back (``cut``:
    their places in ``posts``)."""

    def __init__(
        self,
        upstream: str,
        cuts: list[Cut],
        *,
        forward: Collection[str],
        key_of: Callable[[Post], str | None],
    ) -> None:
        self.upstream, self.cuts = upstream, cuts
        self.workers: list[Any] = []  # (started by through_the_cuts)
        self._forward = {name.lower() for name in forward}
        self._key_of = key_of
        self.posts: list[Post] = []
        self.cut: list[int] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> str:
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return f"http://127.0.0.1:{port}"

    async def _serve(self) -> int:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._session = aiohttp.ClientSession()
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return int(self._runner.addresses[0][1])

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() in self._forward}
        url = self.upstream + request.path_qs
        async with self._session.request(request.method, url, data=raw, headers=headers) as r:
            status, answer, answer_headers = r.status, await r.read(), CIMultiDict(r.headers)
        if request.method == "POST":
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = {}
            post: Post = {
                "path": request.path,
                "headers": CIMultiDict(request.headers),
                "body": body if isinstance(body, dict) else {},
                "status": status,
                "answer": answer,
                "answer_headers": answer_headers,
            }
            post["key"] = self._key_of(post)
            self.posts.append(post)
            if len(self.cut) < len(self.cuts):
                matches, nth = self.cuts[len(self.cut)]
                seen = sum(1 for earlier in self.posts if matches(earlier))
                if matches(post) and seen >= nth:
                    self.workers[-1].kill(signal.SIGKILL)
                    self.cut.append(len(self.posts) - 1)
        return web.Response(body=answer, status=status, content_type="application/json")

    def stop(self) -> None:
        async def close() -> None:
            await self._session.close()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@contextlib.asynccontextmanager
async def through_the_cuts(
    dep: Deployment,
    proxy: KillingProxy,
    tenants: list[str],
    commands: list[CloudEvent],
    *,
    rate: float,
    each_cut_within: float,
) -> AsyncIterator[OutcomeLog]:
    """Start worker w0 and produce ``commands`` at ``rate`` a second; each time the proxy
    cuts (kills the worker of the moment), start the next, until every cut is made (each
    within ``each_cut_within`` seconds) and every command has its outcome: then yields
    the outcomes read. Stops the outcome reader, the workers and the proxy on the way
    out."""
    ids = {c.get_id() for c in commands}
    workers = proxy.workers
    log = OutcomeLog(dep)
    reader = asyncio.create_task(log.run())
    try:
        workers.append(dep.worker("w0"))
        workers[0].start()
        await asyncio.to_thread(workers[0].wait_ready, tenants, partitions=dep.settings.partitions)
        producing = asyncio.create_task(_produce(dep, commands, rate=rate))
        for n in range(1, len(proxy.cuts) + 1):
            await _wait_for(
                lambda n=n: len(proxy.cut) >= n, each_cut_within, f"kill {n} after a call"
            )
            workers.append(dep.worker(f"w{n}"))
            workers[-1].start()
        await producing
        await _wait_for(lambda: ids <= log.by_command.keys(), 180, "every outcome")
        yield log
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        for worker in workers:
            worker.stop()
        proxy.stop()


def decode_outcome(raw: bytes) -> CloudEvent:
    """An outcome as ``OutcomeLog.records`` holds it (its raw record), decoded."""
    key, value, headers = json.loads(raw)
    event: CloudEvent = decode_record(key, value.encode(), {k: v.encode() for k, v in headers})
    return event


def outcome_kind(raw: bytes) -> str:
    """An outcome's type without its prefix (``payment.succeeded``)."""
    return decode_outcome(raw).get_type().removeprefix("com.paystream.")
