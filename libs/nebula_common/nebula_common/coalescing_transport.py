"""A transport that sends a response head together with the body bytes after it.

uvicorn writes the status line and headers as soon as the app sends
``http.response.start``, and the body in a write of its own: two ``send`` system calls
(and often two TCP segments) for every answer. Profiled on the router, those two writes
were about a fifth of its CPU per proxied request (``bench/findings.md``). Wrapped around
uvicorn's transport, :class:`HeadHoldingTransport` holds a write that starts a response
(``HTTP/1.``) until the next write joins it, or until the end of the event loop's current
turn when none comes: an answer sent at once goes out in one write, and a stream's head
still leaves before the loop waits for its first chunk. A body write that happens to start
with those bytes is only held for the rest of the turn; the order of bytes never changes.
"""

from __future__ import annotations

import asyncio
from typing import Any

HEAD_START = b"HTTP/1."


class HeadHoldingTransport:
    """Delegates to ``transport``; only :meth:`write` (and close/abort) hold or flush."""

    __slots__ = ("_flush_handle", "_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._held = b""
        self._flush_handle: asyncio.Handle | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held:
            self._held = b""
            if self._flush_handle is not None:
                self._flush_handle.cancel()
                self._flush_handle = None
            self._transport.write(held + data)
        elif (data.startswith(HEAD_START) if type(data) is bytes  # no slice per chunk
              else bytes(data[:7]) == HEAD_START):
            self._held = bytes(data)
            self._flush_handle = self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def flush(self) -> None:
        """Send what is held now."""
        self._flush_handle = None
        held, self._held = self._held, b""
        if held and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = b""
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held)

    def __getattr__(self, name: str) -> Any:
        # is_closing, get_extra_info, pause_reading, resume_reading, ...: the transport's own
        return getattr(self._transport, name)
