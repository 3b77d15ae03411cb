"""Typed ASGI aliases and the helpers the router's and the gateway's raw request paths share."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
RawHeaders = list[tuple[bytes, bytes]]
BodyWriter = Callable[[bytes], bool]
"""Writes one more part of a streamed response body now, without a message; False (nothing
written) when that part must go through ``send`` instead."""

BODY_WRITER = "nebula.body_writer"
"""``scope["extensions"][BODY_WRITER]``: the server's :data:`BodyWriter` for this request.
Nebula's own uvicorn protocol offers it (``uvicorn_protocol.Cycle.write_more``); under
another server it is absent and every part goes through ``send``."""


def body_writer(scope: Scope) -> BodyWriter | None:
    """This request's :data:`BodyWriter`, where the server offers one."""
    extensions = scope.get("extensions")
    return extensions.get(BODY_WRITER) if extensions else None

OPENAI_POST_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                               "/v1/responses", "/v1/messages", "/v1/messages/count_tokens",
                               "/tokenize", "/detokenize", "/v1/rerank", "/rerank",
                               "/v1/score"})
"""The POST paths served by the raw hot paths (gateway and router); the rest goes to Quart.
(The gateway translates the Anthropic ones to chat completions and ``/tokenize``; the router
proxies whatever path it is sent to the engine.)"""

JSON_CONTENT_TYPE = (b"content-type", b"application/json")
WATCH_DELAY_S = 0.05
"""How long a request runs before :class:`DisconnectWatcher` starts watching its client."""


class BodyTooLarge(Exception):
    """The request body is (or says it is) over the limit."""

    def __init__(self, limit: int, declared: int | None = None):
        self.limit = limit
        self.declared = declared
        if declared is not None:
            message = f"request body of {declared} bytes exceeds the limit of {limit} bytes"
        else:
            message = f"request body exceeds the limit of {limit} bytes"
        super().__init__(message)


class ClientGone(Exception):
    """The client disconnected before its request body was complete."""


def declared_length(value: bytes | str | None) -> int | None:
    """A ``content-length`` header value as an int; None when absent or not a number."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return int(text) if text.isdigit() else None


async def read_body(receive: Receive, limit: int, declared: int | None = None) -> bytes:
    """The whole request body, refused early when it is over ``limit`` bytes.

    Raises :class:`BodyTooLarge` (before reading when ``content-length`` already says
    so) and :class:`ClientGone`. A time limit is the caller's (``asyncio.timeout``).
    """
    if declared is not None and declared > limit:
        raise BodyTooLarge(limit, declared)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_json(send: Send, status: int, body: bytes,
                    headers: RawHeaders | None = None) -> None:
    """A whole JSON answer in one sized write (no chunked encoding, no terminator write)."""
    hdrs: RawHeaders = [JSON_CONTENT_TYPE, (b"content-length", str(len(body)).encode())]
    if headers:
        hdrs.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class DisconnectWatcher:
    """Cancels the task serving a request as soon as its client goes away (once the
    request has run :data:`WATCH_DELAY_S`).

    An ASGI server reports a closed client connection only through ``receive()``;
    once the body is read nobody calls it, so this watches it in a task of its own
    and cancels the request task, which cancels the upstream call (the engine stops
    generating). :meth:`absorb` tells that cancellation apart from a real one.
    Create it from inside the request task, after the body was read.
    """

    def __init__(self, receive: Receive, ignore: Callable[[], bool] | None = None,
                 delay: float = WATCH_DELAY_S):
        task = asyncio.current_task()
        assert task is not None, "DisconnectWatcher must be created inside the request task"
        self.disconnected = False
        self._request = task
        self._receive = receive
        self._ignore = ignore
        self._watch: asyncio.Future[None] | None = None
        # Most answers are done within ``delay``: they never pay for a task of their own. A
        # client gone before then is seen when the watch starts (the server kept the event).
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            delay, self._start)

    def _start(self) -> None:
        self._timer = None
        # Kept on self and cancelled by stop(): the watcher lives exactly as long as its request.
        self._watch = asyncio.ensure_future(self._run(self._receive, self._ignore))

    async def _run(self, receive: Receive, ignore: Callable[[], bool] | None) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if ignore is not None and ignore():
                    return  # the response is already complete: nothing to cancel
                self.disconnected = True
                self._request.cancel()
                return

    def absorb(self) -> bool:
        """In ``except CancelledError``: True (cancel undone) when the client left."""
        if not self.disconnected:
            return False
        self._request.uncancel()
        return True

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._watch is not None:
            self._watch.cancel()
