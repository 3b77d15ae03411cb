"""A deadline for the request path: ``asyncio.timeout`` at less cost per request.

Every proxied request enters two deadlines on each hop (the body's, moved on to the
request's, and the upstream answer's). ``asyncio.timeout`` looks the running loop up
three times, and ``reschedule`` cancels its timer and arms a new one. :class:`Deadline`
is given its loop, arms one timer and, when the deadline moves later, lets that timer
re-arm itself for the rest once it fires, as the HTTP client's idle timer does. The
semantics are ``asyncio.timeout``'s: on expiry the task is cancelled and the block raises
:class:`TimeoutError`, unless somebody else cancelled the task too, in which case the
``CancelledError`` goes on.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

__all__ = ["Deadline"]


class Deadline:
    """``async with Deadline(loop, seconds):`` — ``None`` seconds: no deadline (yet)."""

    __slots__ = ("_cancelling", "_done", "_expired", "_loop", "_task", "_timer", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float | None) -> None:
        self._loop = loop
        self._when = None if seconds is None else loop.time() + seconds
        self._task: asyncio.Task[object] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False
        self._done = False
        self._cancelling = 0

    def expired(self) -> bool:
        return self._expired

    def reschedule(self, when: float | None) -> None:
        """Move the deadline to loop time ``when`` (``None``: none)."""
        if self._task is None or self._done:
            raise RuntimeError("Deadline.reschedule() outside its block")
        if self._expired:
            raise RuntimeError("Deadline.reschedule() after it expired")
        self._when = when
        timer = self._timer
        if when is None:
            if timer is not None:
                timer.cancel()
                self._timer = None
        elif timer is None:
            self._timer = self._loop.call_at(when, self._fire)
        elif when < timer.when():
            timer.cancel()
            self._timer = self._loop.call_at(when, self._fire)
        # later than the armed timer: it finds the new deadline when it fires

    def _fire(self) -> None:
        self._timer = None
        when = self._when
        if when is None or self._task is None:  # (armed only inside the block, with a time)
            return
        if self._loop.time() < when:  # moved later since this timer was armed
            self._timer = self._loop.call_at(when, self._fire)
            return
        self._expired = True
        self._task.cancel()

    async def __aenter__(self) -> Deadline:
        if self._task is not None:
            raise RuntimeError("Deadline already entered")
        task = asyncio.current_task(self._loop)
        if task is None:
            raise RuntimeError("Deadline should be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        if self._when is not None:
            self._timer = self._loop.call_at(self._when, self._fire)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._expired and self._task is not None:
            # Ours, unless someone else cancelled too: then their CancelledError goes on.
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc
        self._done = True  # the block is over: nothing may cancel its task any more
