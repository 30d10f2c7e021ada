"""Coalesce the Redis commands issued in one event-loop turn into pipelined round trips.

The command agent runs a batch's tenants concurrently, so at any moment up to one
simulator call per tenant is waiting on Redis. Sent one by one, each costs a socket
write, a read wake-up and redis-py's per-request machinery; queued for the end of the
current loop turn and sent as one non-transactional pipeline, they share all of that.
Each command still runs on its own: a pipeline is not a transaction, and every result
(or error) goes back to the call that issued it.

The first command of a turn is written at once when a connection is free, though:
queued to the turn's end, every tenant's call waited for the others' Python work before
Redis saw any of them, then all waited together for the whole pipeline (the worker's
core idle ~15% of a batch). Written at once, Redis runs it while the other tenants
compute, and the rest of the turn still shares one round trip.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from redis.asyncio.client import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

__all__ = ["AutoPipeline", "autopipeline_for"]

_Queued = tuple[tuple[Any, ...], "AsyncScript | None", "asyncio.Future[Any]"]


class AutoPipeline:
    """Queues commands; the first one queued in a loop turn schedules the flush."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._queue: list[_Queued] = []
        self._flushing: set[asyncio.Task[None]] = set()
        self._idle: list[Any] = []  # connections held between flushes
        self._wrote_this_turn = False
        self._unwritten = 0  # flushes waiting for a connection to be written on
        # The newest of those, resolved once it is written (or failed to be): each
        # waits for the one before, so that flushes waiting for new connections, which
        # may connect in any order, still write in the order they were made.
        self._last_unwritten: asyncio.Future[None] | None = None

    def execute(self, *args: Any) -> asyncio.Future[Any]:
        return self._submit(args, None)

    def get(self, key: str) -> asyncio.Future[Any]:
        return self._submit(("GET", key), None)

    def run_script(
        self, script: AsyncScript, keys: list[str], args: list[Any]
    ) -> asyncio.Future[Any]:
        return self._submit(("EVALSHA", script.sha, len(keys), *keys, *args), script)

    def _submit(self, command: tuple[Any, ...], script: AsyncScript | None) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((command, script, fut))
        if not self._wrote_this_turn and self._can_write_now():
            # The turn's first command, and a free connection: write now (see the
            # module's docstring). The rest of the turn shares the turn-end flush.
            self._wrote_this_turn = True
            loop.call_soon(self._next_turn)
            self._flush()
        elif len(self._queue) == 1:
            # Everything already runnable this turn (other tenants' tasks) queues first.
            loop.call_soon(self._flush)
        return fut

    def _next_turn(self) -> None:
        self._wrote_this_turn = False

    def _can_write_now(self) -> bool:
        """A held connection is free, and no flush before is still to be written: Redis
        runs commands in the order they were submitted, as when every write waited for
        the turn's end."""
        idle = self._idle
        return not self._unwritten and bool(idle) and idle[-1].is_connected

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        if not batch:  # written at once already, with a later turn's first command
            return
        written = None
        if self._can_write_now():
            conn = self._idle.pop()
            try:
                # StreamWriter.writelines is the socket write itself (buffered only
                # when the socket would block); send_packed_command would defer it to
                # a task's first step, after every other runnable task. A write error
                # surfaces as the read's ConnectionError, handled in _send.
                conn._writer.writelines(conn.pack_commands(_commands(batch)))
                written = conn
            except Exception:
                # Not written (an argument redis-py cannot pack; a redis-py without
                # ``_writer``): the task's own path writes it, or raises the error to
                # every caller as it always did.
                self._idle.append(conn)
        loop = asyncio.get_running_loop()
        order: tuple[asyncio.Future[None] | None, asyncio.Future[None]] | None = None
        if written is None:
            self._unwritten += 1  # until _pipeline has written it (or failed to)
            order = (self._last_unwritten, loop.create_future())
            self._last_unwritten = order[1]
        task = loop.create_task(self._send(batch, written, order))
        self._flushing.add(task)  # keep a reference until done
        task.add_done_callback(self._flushing.discard)

    async def _send(
        self,
        batch: list[_Queued],
        written: Any = None,
        order: tuple[asyncio.Future[None] | None, asyncio.Future[None]] | None = None,
    ) -> None:
        try:
            try:
                results = await self._pipeline(batch, written, order)
            except RedisConnectionError:
                if not all(command[0] in _REPEATABLE for command, _, _ in batch):
                    raise
                # Held connections go stale together (server restart, idle timeout): drop
                # them all and try once more on a fresh one, as redis-py's own retry
                # would. GETs and the simulator's scripts (idempotent per key) may repeat.
                await self._drop_idle()
                results = await self._pipeline(batch)
            # A script unknown to the server (restart, SCRIPT FLUSH): load it and retry once.
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if missing:
                for script in {id(batch[i][1]): batch[i][1] for i in missing}.values():
                    if script is not None:
                        script.sha = await self._redis.script_load(script.script)
                retried = await self._pipeline([batch[i] for i in missing])
                for i, result in zip(missing, retried, strict=True):
                    results[i] = result
        except BaseException as exc:  # the connection failed: every caller gets the error
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else ConnectionError())
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, fut), result in zip(batch, results, strict=True):
            if fut.done():  # the caller was cancelled
                continue
            if isinstance(result, Exception):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    async def _pipeline(
        self,
        batch: list[_Queued],
        written: Any = None,
        order: tuple[asyncio.Future[None] | None, asyncio.Future[None]] | None = None,
    ) -> list[Any]:
        """Write the batch on a held connection (unless ``written`` on it already) and
        read its replies in order. ``order``: (the flush before, still to be written,
        if any; this one's): a flush's first attempt writes after the one before.

        redis-py's own pipeline costs far more than the round trip it saves here (pool
        lock, health checks, retry and observability hooks per call), so a connection is
        taken from the client's pool once and kept; a failed one goes back disconnected.
        """
        conn = written
        try:
            if conn is None:
                try:
                    if order is not None and order[0] is not None and not order[0].done():
                        # (Before taking a connection: one held while waiting could be
                        # the one the flush before needs, were the pool bounded.)
                        await asyncio.shield(order[0])
                    pool = self._redis.connection_pool
                    conn = self._idle.pop() if self._idle else await pool.get_connection()
                    await conn.send_packed_command(
                        conn.pack_commands(_commands(batch)), check_health=False
                    )
                finally:
                    if order is not None:  # (the flush's first attempt: see _flush)
                        self._unwritten -= 1
                        if not order[1].done():
                            order[1].set_result(None)
                        if self._last_unwritten is order[1]:
                            self._last_unwritten = None
            results: list[Any] = []
            for _ in batch:
                try:
                    results.append(await conn.read_response())
                except ResponseError as exc:  # this command's error, not the connection's
                    results.append(exc)
        except BaseException:
            # Replies may be half read: never reuse the connection as it is.
            if conn is not None:  # (None: no connection could be had)
                await self._discard(conn)
            raise
        self._idle.append(conn)
        return results

    async def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._discard(conn)

    async def _discard(self, conn: Any) -> None:
        try:
            await conn.disconnect(nowait=True)
        finally:
            await self._redis.connection_pool.release(conn)


def _commands(batch: list[_Queued]) -> list[tuple[Any, ...]]:
    return [
        # A script's sha as it is now (reloaded after a NoScriptError); unchanged, the
        # command as queued.
        command
        if script is None or command[1] == script.sha
        else ("EVALSHA", script.sha, *command[2:])
        for command, script, _ in batch
    ]


# Commands a dropped connection may have run already that are safe to send again.
_REPEATABLE = frozenset({"GET", "EVALSHA"})


_BY_CLIENT: weakref.WeakKeyDictionary[Redis, AutoPipeline] = weakref.WeakKeyDictionary()


def autopipeline_for(redis: Redis) -> AutoPipeline:
    """One queue per client, shared by every tenant's simulator on that client."""
    found = _BY_CLIENT.get(redis)
    if found is None:
        found = _BY_CLIENT[redis] = AutoPipeline(redis)
    return found
