"""A TCP proxy between the gateway and a dependency that tests can cut and restore.

`cut()` makes the dependency unreachable the way a dead network does: bytes are dropped, new
connections are accepted and never answered (clients wait for their timeouts), nothing is reset.
`restore()` drops the frozen connections (their protocol state is lost) and forwards again.
`delay` adds latency each way; `drop()` resets the open connections. `freeze()` hangs the
network the way a stalled path does: nothing is lost, bytes wait (new connections too) and are
delivered in order, a closed side's end after them, at `thaw()`. `freeze_at(pattern)` freezes
the network the moment the client sends bytes holding `pattern` (a COMMIT), before they pass;
with `alone`, only the connection that sent them (the others go on) until `thaw()`.
"""

from __future__ import annotations

import asyncio
import contextlib


class Proxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.cut_now = False
        self.delay = 0.0  # seconds added to every chunk, each way
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self._thawed = asyncio.Event()
        self._thawed.set()
        self._freeze_at: bytes | None = None
        self._alone = False
        self._gates: list[asyncio.Event] = []  # connections frozen alone
        self.sent = 0  # chunks the client sent upstream (its messages, about one a round trip)

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self.cut_now:
                await self._swallow(reader)
                return
            await self._thawed.wait()
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            self._writers.add(up_writer)
            gate = asyncio.Event()
            gate.set()
            a = asyncio.create_task(self._pipe(reader, up_writer, gate, upstream=True))
            b = asyncio.create_task(self._pipe(up_reader, writer, gate))
            self._tasks |= {a, b}
            await asyncio.wait({a, b}, return_when=asyncio.FIRST_COMPLETED)
            for t in (a, b):
                t.cancel()
            self._tasks -= {a, b}
            up_writer.close()
            self._writers.discard(up_writer)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        while await reader.read(65536):
            pass

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        gate: asyncio.Event,
        upstream: bool = False,
    ) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if self.cut_now:
                    continue  # dropped on the floor, like packets to a dead host
                if upstream:
                    self.sent += 1
                if upstream and self._freeze_at is not None and self._freeze_at in data:
                    self._freeze_at = None
                    if self._alone:
                        gate.clear()
                        self._gates.append(gate)
                    else:
                        self.freeze()
                await self._thawed.wait()
                await gate.wait()
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()

    def drop(self) -> None:
        """Reset every open connection (a firewall flush, a NAT timeout); new ones go through."""
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    def cut(self) -> None:
        self.cut_now = True

    def freeze(self) -> None:
        self._thawed.clear()

    def freeze_at(self, pattern: bytes, alone: bool = False) -> None:
        self._freeze_at, self._alone = pattern, alone

    def thaw(self) -> None:
        self._thawed.set()
        for gate in self._gates:
            gate.set()
        self._gates.clear()

    def restore(self) -> None:
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()
        self.cut_now = False

    async def close(self) -> None:
        self.thaw()
        self.restore()
        for t in list(self._tasks):
            t.cancel()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)
