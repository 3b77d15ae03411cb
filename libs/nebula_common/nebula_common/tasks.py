"""Long-running tasks that are kept and supervised: none is fire-and-forget, none dies silently.

asyncio holds only a weak reference to a task, and an exception in a task nobody
awaits is logged at garbage collection, if ever: a reconcile loop that hit one bad
record would stop for good while its process looks alive. A :class:`TaskSet`
keeps every task it starts, and for each says what a crash means: ``restart``
(log it, count it, back off, run the loop again) or fatal (the set's ``failed``
event fires with the error, and the role exits non-zero).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from prometheus_client import Counter

from .retry import backoff_delay

log = logging.getLogger(__name__)

TASK_CRASHES = Counter("nebula_common_task_crashes_total",
                       "Long-running tasks that raised, by kind of task (a restart follows "
                       "for supervised loops).", ["task"])


def task_kind(name: str) -> str:
    """The metric label of a task name: ``replica:m/r1`` counts as ``replica`` (bounded)."""
    return name.split(":", 1)[0]


async def cancel_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait for it; whatever it raised on the way out is moot."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass


class TaskSet:
    """The background tasks of one component, each kept until it ends."""

    def __init__(self, owner: str = ""):
        self.owner = owner
        self.tasks: set[asyncio.Task[Any]] = set()
        self.failed = asyncio.Event()
        """Set when a task that must not die (``restart=False``) raised."""
        self.error: BaseException | None = None

    def supervise(self, name: str, loop: Callable[[], Awaitable[None]], *,
                  restart: bool = True, initial_s: float = 0.5, maximum_s: float = 30.0
                  ) -> asyncio.Task[None]:
        """Run ``loop()`` as a task; when it raises, restart it after a backoff.

        A loop that returns normally is done. With ``restart=False`` a crash is
        fatal instead: :attr:`failed` is set and the caller decides how to exit.
        """
        return self.spawn(self._supervised(name, loop, restart, initial_s, maximum_s), name)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """A one-shot task, kept until it ends; an exception it raises is logged and counted."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, _AlreadyReported):
            TASK_CRASHES.labels(task_kind(task.get_name())).inc()
            log.error("task %s%s failed: %r", self._prefix(), task.get_name(), exc,
                      exc_info=exc)

    def _prefix(self) -> str:
        return f"{self.owner}/" if self.owner else ""

    async def _supervised(self, name: str, loop: Callable[[], Awaitable[None]],
                          restart: bool, initial_s: float, maximum_s: float) -> None:
        crashes = 0
        while True:
            started = asyncio.get_running_loop().time()
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A loop that ran well for a while before this crash starts its backoff anew.
                ran = asyncio.get_running_loop().time() - started
                crashes = 1 if ran > maximum_s else crashes + 1
                TASK_CRASHES.labels(task_kind(name)).inc()
                if not restart:
                    log.critical("task %s%s crashed; it must not stop, so the process "
                                 "gives up", self._prefix(), name, exc_info=exc)
                    self.error = exc
                    self.failed.set()
                    raise _AlreadyReported from exc
                delay = backoff_delay(crashes, initial=initial_s, maximum=maximum_s,
                                      jitter=initial_s)
                log.error("task %s%s crashed (%d in a row); restarting in %.1fs",
                          self._prefix(), name, crashes, delay, exc_info=exc)
            await asyncio.sleep(delay)

    async def close(self) -> None:
        """Cancel every task still running and wait for them."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            await cancel_task(task)
        self.tasks.clear()


class _AlreadyReported(Exception):
    """Ends a fatal supervised task whose crash was already logged and counted."""
