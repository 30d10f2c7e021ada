"""A crash run against a provider (tests/e2e/test_stripe_crash.py: localstripe;
tests/e2e/test_square_crash.py, tests/e2e/test_paddle_crash.py: the FAKE Square and
Paddle): a proxy between the workers and the
provider SIGKILLs the worker of the moment once the provider has run chosen POSTs and
before their answers return, so that their commands are certain to be redelivered; a
worker is started in its place after each kill, until every command has its outcome.

A kill cuts every call then in flight: the proxy holds the answer of a call to cut
while the worker goes on with others beside it (other tenants, other payments' chains),
until it holds one for each cut to make (a create, a capture, a refund: each of its own
path), and then kills. Should the worker stop calling first (waiting on the answers
held: nothing in hand to call for the other cuts), it kills with what it holds, and the
cuts not made are made by a later kill. Most runs make every cut with one kill, the
others with two: a worker start each, where a kill for each cut cost one a cut."""

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

__all__ = [
    "Cut",
    "KillingProxy",
    "Post",
    "decode_outcome",
    "outcome_kind",
    "staggered",
    "through_the_cuts",
]

# A POST the proxy recorded (``KillingProxy.posts``): its ``path``, request ``headers``,
# JSON ``body`` ({} for another body), idempotency ``key``, the provider's ``status``,
# ``answer`` (bytes) and ``answer_headers``.
Post = dict[str, Any]
# Which POSTs a cut counts (a predicate over a recorded POST), and the how-many-th of
# those it cuts at (or any later one).
Cut = tuple[Callable[[Post], bool], int]


class KillingProxy:
    """Forwards the workers' calls to the provider at ``upstream`` (only the request
    headers named in ``forward``), on a loop of its own, recording each POST (``posts``;
    its idempotency key as ``key_of`` reads it from the recorded POST). A POST that is
    at least the ``nth`` that one of ``cuts`` (not yet made) matches has run at the
    provider: its answer is held until a POST is held for each cut still to make, or no
    POST has come for ``quiet`` seconds (the worker waits on those held), and then the
    last of ``workers`` (the worker of the moment) is SIGKILLed before any of them goes
    back (``cut``: each cut's place in ``posts``; ``kills``: how many kills). With
    ``hold_max``, the kill comes at the latest that long after the first answer was
    held, so that it lands inside the workers' call timeout even while they go on
    calling (for a test that lowers that timeout: what a kill leaves held lasts less)."""

    def __init__(
        self,
        upstream: str,
        cuts: list[Cut],
        *,
        forward: Collection[str],
        key_of: Callable[[Post], str | None],
        quiet: float = 2.0,
        hold_max: float | None = None,
    ) -> None:
        self.upstream, self.cuts, self.quiet, self.hold_max = upstream, cuts, quiet, hold_max
        # Seconds from each kill's first held answer to the kill: a test on a short call
        # timeout checks its cut calls were still in flight, not timed out and retried.
        self.kill_after: list[float] = []
        self._first_held_at = 0.0
        self.workers: list[Any] = []  # (started by through_the_cuts)
        self._forward = {name.lower() for name in forward}
        self._key_of = key_of
        self.posts: list[Post] = []
        self.cut: dict[int, int] = {}
        self.kills = 0
        self._held: dict[int, int] = {}  # (the cuts of the coming kill)
        self._last_post = 0.0  # (loop time)
        self._watching: asyncio.Future[None] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> str:
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return f"http://127.0.0.1:{port}"

    async def _serve(self) -> int:
        self._back = asyncio.Event()  # (set when the held answers go back)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._session = aiohttp.ClientSession()
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return int(self._runner.addresses[0][1])

    async def _handle(self, request: web.Request) -> web.Response:
        # (A call that came before a kill, or before the next worker was started, is from a
        # dead worker: never cut.)
        live = self.kills if len(self.workers) > self.kills else None
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
            self._last_post = asyncio.get_running_loop().time()
            cut = self._cut_by(post) if live == self.kills else None
            if cut is not None:
                self._held[cut] = len(self.posts) - 1
                if len(self._held) == 1:
                    self._first_held_at = asyncio.get_running_loop().time()
                back = self._back
                if len(self.cut) + len(self._held) == len(self.cuts):
                    self._kill()
                elif len(self._held) == 1:
                    self._watching = asyncio.ensure_future(self._kill_when_quiet(back))
                await back.wait()
        return web.Response(body=answer, status=status, content_type="application/json")

    def _cut_by(self, post: Post) -> int | None:
        """The cut still to make that ``post`` makes, if any."""
        for n, (matches, nth) in enumerate(self.cuts):
            if n in self.cut or n in self._held or not matches(post):
                continue
            if sum(1 for earlier in self.posts if matches(earlier)) >= nth:
                return n
        return None

    async def _kill_when_quiet(self, back: asyncio.Event) -> None:
        """Kill once no POST has come for ``quiet`` seconds (or ``hold_max`` has passed),
        unless ``back`` is set first (the held answers gone back: a kill came)."""
        loop = asyncio.get_running_loop()
        held_since = loop.time()
        hold_max = float("inf") if self.hold_max is None else self.hold_max
        while not back.is_set():
            now = loop.time()
            if now - self._last_post < self.quiet and now - held_since < hold_max:
                await asyncio.sleep(self.quiet / 10)
            else:
                self._kill()

    def _kill(self) -> None:
        self.workers[-1].kill(signal.SIGKILL)
        self.kill_after.append(asyncio.get_running_loop().time() - self._first_held_at)
        self.cut.update(self._held)
        self._held = {}
        self.kills += 1
        self._back.set()  # (the held answers go back: to no one)
        self._back = asyncio.Event()

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
    each_cut_within: float,
) -> AsyncIterator[OutcomeLog]:
    """Start worker w0 and, once it is ready, produce ``commands`` at once (so that it
    has many in hand: calls side by side); each time the proxy kills the worker of the
    moment, start the next, until every cut is made (each kill within ``each_cut_within``
    seconds of the worker before) and every command has its outcome: then yields the
    outcomes read. Stops the outcome reader, the workers and the proxy on the way out."""
    ids = {c.get_id() for c in commands}
    workers = proxy.workers
    log = OutcomeLog(dep)
    reader = asyncio.create_task(log.run())
    try:
        workers.append(dep.worker("w0"))
        await asyncio.to_thread(workers[0].start)
        await asyncio.to_thread(workers[0].wait_ready, tenants, partitions=dep.settings.partitions)
        await _produce(dep, commands, rate=None)
        while len(proxy.cut) < len(proxy.cuts):
            n = len(workers)
            await _wait_for(lambda n=n: proxy.kills >= n, each_cut_within, f"kill {n} after a call")
            # (Stopped at once: its process group swept while its id is still its own.)
            await asyncio.to_thread(workers[-1].stop)
            workers.append(dep.worker(f"w{n}"))
            await asyncio.to_thread(workers[-1].start)
        await _wait_for(lambda: ids <= log.by_command.keys(), 180, "every outcome")
        yield log
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        for worker in workers:
            if not worker.exited():  # (a killed one was stopped then: swept no later)
                worker.stop()
        proxy.stop()


def staggered(payments: list[list[CloudEvent]], lag: int = 1) -> list[CloudEvent]:
    """A tenant's commands from each payment's (its create, then its follow-ups): each
    create, then the follow-ups of the payment ``lag`` creates before. Any stretch of
    the stream then holds creates and follow-ups of other payments, which a worker runs
    side by side (agents/tenant_chains.py), so that one kill can cut them all."""
    out: list[CloudEvent] = []
    for j, (create, *_) in enumerate(payments):
        out.append(create)
        if j >= lag:
            out += payments[j - lag][1:]
    for _, *follow_ups in payments[-lag:]:
        out += follow_ups
    return out


def decode_outcome(raw: bytes) -> CloudEvent:
    """An outcome as ``OutcomeLog.records`` holds it (its raw record), decoded."""
    key, value, headers = json.loads(raw)
    event: CloudEvent = decode_record(key, value.encode(), {k: v.encode() for k, v in headers})
    return event


def outcome_kind(raw: bytes) -> str:
    """An outcome's type without its prefix (``payment.succeeded``)."""
    return decode_outcome(raw).get_type().removeprefix("com.paystream.")
