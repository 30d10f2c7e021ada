"""A TCP proxy that can turn the connections open through it into black holes.

What a broken network path looks like to a client: its connection stays open, its
requests are accepted by the kernel, and no answer ever comes (no reset, no FIN). A
frozen broker (SIGSTOP) does that to new connections too; this does it only to those
open when :meth:`BlackholeProxy.blackhole` is called, so a client that gives up on one
and connects again gets through. The proxy runs on a thread of its own
(tests/e2e/threaded_proxy.py).
"""

from __future__ import annotations

import asyncio

from tests.e2e.threaded_proxy import ThreadedProxy

__all__ = ["BlackholeProxy"]


class BlackholeProxy(ThreadedProxy):
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        super().__init__(target_port, host)
        self._era = 0  # connections of an earlier era are black holes
        self.opened = 0  # connections accepted, all eras

    def blackhole(self) -> None:
        """From now on, nothing more passes on the connections open now, either way."""
        self._era += 1  # (an int assignment: atomic for the proxy's thread)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        era = self._era
        self.opened += 1
        upstream = await self._upstream(writer)
        if upstream is None:
            return
        up_reader, up_writer = upstream

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
