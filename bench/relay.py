"""The floor of ``make bench``'s per-chunk table: a TCP byte relay on uvloop that parses nothing.

Each client connection gets one connection to the upstream; whatever arrives on one side
is written to the other from the protocol's ``data_received``, with no HTTP parsing, no
task, no future, no buffer of its own (a side that cannot keep up pauses reading on the
other, as a proxy must). It is the least a Python proxy on uvloop can spend on a forwarded
chunk on this machine: one read, one write and the event loop's share. The bench runs one
in front of each paced stand-in, so the CPU per chunk of the router and the gateway can be
read against what the kernel and the loop take anyway, measured in the same run.

Run: ``python -m bench.relay --port P --upstream-port U [--upstream-host H]``.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

import uvloop

from .pacer import BACKLOG, serve_until_signalled


class _Side(asyncio.Protocol):
    """One of a relayed pair's two connections; ``peer`` is the other once it exists."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.early: list[bytes] = []  # what arrived before the two sides were paired

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def _other(self) -> asyncio.Transport | None:
        """The other side's transport, while there is one."""
        return self.peer.transport if self.peer is not None else None

    def data_received(self, data: bytes) -> None:
        other = self._other()
        if other is not None:
            other.write(data)
        else:
            self.early.append(data)

    def eof_received(self) -> bool | None:
        other = self._other()
        if other is not None and other.can_write_eof():
            other.write_eof()
            return True  # half-closed: the other direction may still carry bytes
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        other = self._other()
        if other is not None:
            other.close()

    # A side whose writes back up stops the other side's reads, and starts them again.
    def pause_writing(self) -> None:
        other = self._other()
        if other is not None:
            other.pause_reading()

    def resume_writing(self) -> None:
        other = self._other()
        if other is not None:
            other.resume_reading()


class _Client(_Side):
    """The accepted side: connects its upstream as it arrives."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self._upstream = (host, port)
        self._connecting: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(_Side, *self._upstream)
        except OSError:
            if self.transport is not None:
                self.transport.close()  # no upstream: the client sees the connection end
            return
        if self.transport is None:  # the client left while we connected
            upstream.transport.close()  # type: ignore[union-attr]
            return
        upstream.peer, self.peer = self, upstream
        for side in (self, upstream):  # what either side sent before they were paired
            early, side.early = side.early, []
            for data in early:
                side.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        super().connection_lost(exc)


async def start(port: int, upstream_host: str, upstream_port: int,
                host: str = "127.0.0.1") -> asyncio.Server:
    """A relay of ``host:port`` to ``upstream_host:upstream_port``, serving."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Client(upstream_host, upstream_port), host, port,
                                    backlog=BACKLOG)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench.relay", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream-host", default="127.0.0.1")
    p.add_argument("--upstream-port", type=int, required=True)
    args = p.parse_args(argv)

    async def run() -> None:
        await serve_until_signalled(await start(args.port, args.upstream_host,
                                                args.upstream_port, args.host))

    uvloop.run(run())


if __name__ == "__main__":
    main()
