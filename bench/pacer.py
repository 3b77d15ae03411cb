"""A near-zero-cost *paced* SSE stand-in: 64 chunks, one every 10 ms, on a raw uvloop protocol.

nginx cannot space the chunks of one response, and ``nebula-sim`` (a Quart app
on Hypercorn) spends tens of microseconds per chunk, so at 1,000 concurrent
10 ms-paced streams (100,000 chunks/s) the sim alone saturates a 2-core box and
the "direct" baseline measures the sim, not the network. This server does the
minimum: parse a request head and body, answer ``text/event-stream`` with
chunked transfer encoding, and write every active stream's next frame from one
shared timer, so a chunk costs one ``transport.write``. Keep-alive is supported;
any request path is answered with the stream except ``GET /health``.

Run: ``python -m bench.pacer --port P [--chunks 64] [--interval-ms 10]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Sequence

import uvloop

HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
        b"transfer-encoding: chunked\r\n\r\n")
HEALTH = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
MAX_HEAD = 64 * 1024
BACKLOG = 4096
"""Listen backlog of the bench's own servers: 1,000 clients connect at once."""


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk of ``data``."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def frames(model: str, count: int) -> list[bytes]:
    """The chunked-encoded SSE frames of one answer: ``count`` tokens, usage+[DONE] last."""
    out = []
    for i in range(count):
        delta = {"content": f" t{i}"}
        if i == 0:
            delta = {"role": "assistant", **delta}
        body = {"id": "chatcmpl-pace", "object": "chat.completion.chunk", "created": 1700000000,
                "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                             "finish_reason": "stop" if i == count - 1
                                             else None}]}
        out.append(chunk(b"data: " + json.dumps(body, separators=(",", ":")).encode()
                         + b"\n\n"))
    usage = {"id": "chatcmpl-pace", "object": "chat.completion.chunk", "created": 1700000000,
             "model": model, "choices": [], "usage": {"prompt_tokens": 8,
                                                      "completion_tokens": count,
                                                      "total_tokens": 8 + count}}
    out[-1] += chunk(b"data: " + json.dumps(usage, separators=(",", ":")).encode() + b"\n\n")
    out[-1] += chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
    return out


def parse_head(head: bytes) -> tuple[bytes, bytes, int]:
    """(method, path, content-length) of a request head (without the blank line)."""
    lines = head.split(b"\r\n")
    method, path, _ = lines[0].split(b" ", 2)
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return method, path, length


class Pacer:
    """Holds every active stream and writes their next frames on one shared tick."""

    def __init__(self, model: str, count: int, interval_s: float):
        self.frames = frames(model, count)
        self.interval_s = interval_s
        self.active: dict[Conn, int] = {}
        self.loop = asyncio.get_running_loop()
        self._next = self.loop.time() + interval_s
        self.loop.call_at(self._next, self.tick)

    def start(self, conn: Conn) -> None:
        conn.transport.write(HEAD + self.frames[0])  # first token right away
        if len(self.frames) == 1:
            conn.finished()
        else:
            self.active[conn] = 1

    def tick(self) -> None:
        done = []
        last = len(self.frames)
        for conn, i in self.active.items():
            if conn.closed:
                done.append(conn)
                continue
            conn.transport.write(self.frames[i])
            if i + 1 == last:
                done.append(conn)
            else:
                self.active[conn] = i + 1
        for conn in done:
            self.active.pop(conn, None)
            if not conn.closed:
                conn.finished()
        self._next += self.interval_s
        now = self.loop.time()
        if self._next < now:  # fell behind: do not burst to catch up
            self._next = now + self.interval_s
        self.loop.call_at(self._next, self.tick)


class Conn(asyncio.Protocol):
    def __init__(self, pacer: Pacer):
        self.pacer = pacer
        self.buffer = b""
        self.closed = False
        self.busy = False
        self.transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream connection is given a Transport; the base signature says BaseTransport.
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.next_request()

    def next_request(self) -> None:
        if self.busy:
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self.transport.close()
            return
        try:
            method, path, length = parse_head(self.buffer[:end])
        except ValueError:
            self.transport.close()
            return
        if len(self.buffer) < end + 4 + length:
            return  # body not complete yet
        self.buffer = self.buffer[end + 4 + length:]
        if method == b"GET" and path == b"/health":
            self.transport.write(HEALTH)
            self.next_request()
            return
        self.busy = True
        self.pacer.start(self)

    def finished(self) -> None:
        self.busy = False
        self.next_request()


async def serve(host: str, port: int, model: str, count: int, interval_s: float) -> None:
    pacer = Pacer(model, count, interval_s)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Conn(pacer), host, port, backlog=BACKLOG)
    await serve_until_signalled(server)


async def serve_until_signalled(server: asyncio.Server) -> None:
    """Serve until SIGTERM or SIGINT (the bench stops its processes by pid with SIGTERM)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench.pacer", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model-name", default="bench-paced")
    p.add_argument("--chunks", type=int, default=64)
    p.add_argument("--interval-ms", type=float, default=10.0)
    args = p.parse_args(argv)
    uvloop.run(serve(args.host, args.port, args.model_name, args.chunks,
                     args.interval_ms / 1000.0))


if __name__ == "__main__":
    main()
