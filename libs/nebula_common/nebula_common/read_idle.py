"""A streamed answer's read timeout at one timer per stream instead of one per chunk.

aiohttp enforces ``sock_read`` by re-arming a timer on every packet it receives (a
``TimerHandle`` cancelled and a new one pushed on the loop's heap, per chunk): about 3 %
of the gateway's CPU on 10 ms-paced streams. While a stream's body is read, :class:`ReadIdle`
turns that timer off and keeps the same limit itself: the reader notes when it starts and
stops waiting (two stores a chunk) and one timer, re-armed only when it fires, fails the
read with aiohttp's own ``SocketTimeoutError`` once a single wait lasted the limit.
"""

from __future__ import annotations

import asyncio

import aiohttp

NOT_WAITING = float("inf")


class ReadIdle:
    """The ``sock_read`` limit of one streamed response, checked from a timer of its own.

    Set :attr:`since` to the loop's time before each read and to :data:`NOT_WAITING` after
    it: time spent sending to a slow client is not upstream silence (aiohttp, too, stops
    its timer while its buffer is full). :meth:`stop` once the stream is done.
    """

    __slots__ = ("_content", "_handle", "_protocol", "_timeout", "now", "since")

    def __init__(self, upstream: aiohttp.ClientResponse) -> None:
        loop = asyncio.get_running_loop()
        self.since = NOT_WAITING
        self.now = loop.time
        self._handle: asyncio.TimerHandle | None = None
        connection = upstream.connection
        protocol = connection.protocol if connection is not None else None
        timeout = protocol.read_timeout if protocol is not None else None
        if protocol is None or not timeout:
            return  # body already read, or no limit: aiohttp has nothing to enforce either
        self._timeout = timeout
        self._protocol = protocol
        self._content = upstream.content
        # set_response_params() sets the limit again for the connection's next request
        protocol.read_timeout = None
        protocol.start_timeout()  # with no limit this only cancels the pending timer
        self._handle = loop.call_later(timeout, self._check)

    def _check(self) -> None:
        waited = self.now() - self.since
        if waited >= self._timeout:
            self._handle = None
            exc = aiohttp.SocketTimeoutError("Timeout on reading data from socket")
            self._protocol.set_exception(exc)  # what aiohttp's own timer does
            self._content.set_exception(exc)
            return
        left = self._timeout - waited if self.since != NOT_WAITING else self._timeout
        self._handle = asyncio.get_running_loop().call_later(left, self._check)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
