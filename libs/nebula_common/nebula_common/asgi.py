"""Helpers for the raw ASGI request paths of the router and the gateway."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


class DisconnectWatcher:
    """Cancels the task serving a request as soon as its client goes away.

    An ASGI server reports a closed client connection only through ``receive()``;
    once the body is read nobody calls it, so this watches it in a task of its own
    and cancels the request task, which cancels the upstream call (the engine stops
    generating). :meth:`absorb` tells that cancellation apart from a real one.
    Create it from inside the request task, after the body was read.
    """

    def __init__(self, receive: Callable[[], Awaitable[dict[str, Any]]],
                 ignore: Callable[[], bool] | None = None):
        task = asyncio.current_task()
        assert task is not None, "DisconnectWatcher must be created inside the request task"
        self.disconnected = False
        self._request = task
        self._watch = asyncio.ensure_future(self._run(receive, ignore))

    async def _run(self, receive: Callable[[], Awaitable[dict[str, Any]]],
                   ignore: Callable[[], bool] | None) -> None:
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
        self._watch.cancel()
