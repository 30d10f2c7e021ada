"""A TCP proxy that can turn the connections open through it into black holes.

What a broken network path looks like to a client: its connection stays open, its
requests are accepted by the kernel, and no answer ever comes (no reset, no FIN). A
frozen broker (SIGSTOP) does that to new connections too; this does it only to those
open when :meth:`BlackholeProxy.blackhole` is called, so a client that gives up on one
and connects again gets through. The proxy runs on a thread of its own: the tests
around it block (waiting for a worker) while it must keep forwarding.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from paystream.devstack._process import free_port

__all__ = ["BlackholeProxy"]


class BlackholeProxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port(host)
        self._target = target_port
        self._era = 0  # connections of an earlier era are black holes
        self.opened = 0  # connections accepted, all eras
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> BlackholeProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, self.host, self.port), self._loop
        ).result(timeout=10)
        return self

    def blackhole(self) -> None:
        """From now on, nothing more passes on the connections open now, either way."""
        self._era += 1  # (an int assignment: atomic for the proxy's thread)

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

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        era = self._era
        self.opened += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self._target)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                if era != self._era:
                    await asyncio.Event().wait()  # swallowed, and never another byte
                dst.write(data)
                await dst.drain()
            dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            up_writer.close()
            writer.close()
