"""A TCP proxy on a thread and event loop of its own, for end-to-end tests that cut or
rewrite a worker's broker connections: the tests around it block (waiting for a worker)
while it must keep forwarding. Subclasses handle each accepted connection."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from ssl import SSLContext
from typing import Self

__all__ = ["ThreadedProxy"]


class ThreadedProxy:
    def __init__(
        self, target_port: int, host: str = "127.0.0.1", ssl: SSLContext | None = None
    ) -> None:
        self.host = host
        self._ssl = ssl  # accepted connections are TLS with this server context
        # Bound (not listening: a connection is refused) from now on, so no other
        # process takes the port before start() (free_port() let it go at once).
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._sock.bind((host, 0))
        self.port = int(self._sock.getsockname()[1])
        self._target = target_port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def retarget(self, target_port: int) -> None:
        """Forward connections accepted from now on to ``target_port``."""
        self._target = target_port

    def start(self) -> Self:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, sock=self._sock, ssl=self._ssl), self._loop
        ).result(timeout=10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # their sockets closed

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    async def _upstream(
        self, writer: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection to the target for an accepted one (None, and it closed, if the
        target cannot be reached)."""
        try:
            return await asyncio.open_connection(self.host, self._target)
        except OSError:
            writer.close()
            return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward the bytes both ways (subclasses cut or rewrite them)."""
        upstream = await self._upstream(writer)
        if upstream is None:
            return
        up_reader, up_writer = upstream

        async def pipe(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, to_target: bool
        ) -> None:
            while data := await src.read(65536):
                await self._passing(data, to_target)
                dst.write(data)
                await dst.drain()
            dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            up_writer.close()
            writer.close()

    async def _passing(self, data: bytes, to_target: bool) -> None:
        """Called with each chunk before it is forwarded (``to_target``: the client's):
        a subclass may hold it back by not returning yet."""
