"""Deadline: asyncio.timeout's semantics with one timer per block."""

from __future__ import annotations

import asyncio
import time

import pytest

from nebula_common.deadline import Deadline


async def test_expires_as_a_timeout_error() -> None:
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with Deadline(loop, 0.05) as deadline:
            await asyncio.sleep(5)
    assert deadline.expired()
    assert 0.04 <= time.monotonic() - started < 2


async def test_a_block_done_in_time_is_untouched() -> None:
    loop = asyncio.get_running_loop()
    async with Deadline(loop, 5) as deadline:
        await asyncio.sleep(0)
    assert not deadline.expired()
    await asyncio.sleep(0.01)  # the cancelled timer does not fire later
    task = asyncio.current_task()
    assert task is not None and not task.cancelling()


async def test_none_waits_until_rescheduled() -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        async with Deadline(loop, None) as deadline:
            await asyncio.sleep(0.02)  # no deadline yet
            deadline.reschedule(loop.time() + 0.03)
            await asyncio.sleep(5)


async def test_moved_later_it_waits_for_the_new_time() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with Deadline(loop, 0.03) as deadline:
            deadline.reschedule(started + 0.15)  # the armed timer re-arms itself
            await asyncio.sleep(5)
    assert loop.time() - started >= 0.14


async def test_moved_earlier_it_fires_earlier() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with Deadline(loop, 30) as deadline:
            deadline.reschedule(started + 0.03)
            await asyncio.sleep(5)
    assert loop.time() - started < 2


async def test_rescheduled_to_none_never_fires() -> None:
    loop = asyncio.get_running_loop()
    async with Deadline(loop, 0.02) as deadline:
        deadline.reschedule(None)
        await asyncio.sleep(0.06)
    assert not deadline.expired()


async def test_an_outside_cancel_stays_a_cancel() -> None:
    loop = asyncio.get_running_loop()

    async def body() -> None:
        async with Deadline(loop, 5):
            await asyncio.sleep(5)

    task = asyncio.ensure_future(body())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancelled_from_outside_as_it_expires_stays_a_cancel() -> None:
    loop = asyncio.get_running_loop()

    async def body() -> None:
        async with Deadline(loop, 0.02):
            try:
                await asyncio.sleep(5)
            finally:
                # the deadline cancelled it; now somebody else does as well
                asyncio.current_task().cancel()  # type: ignore[union-attr]
                await asyncio.sleep(0)

    with pytest.raises(asyncio.CancelledError):
        await asyncio.ensure_future(body())


async def test_nested_inner_expiry_is_the_inner_ones() -> None:
    loop = asyncio.get_running_loop()
    async with Deadline(loop, 5) as outer:
        with pytest.raises(TimeoutError):
            async with Deadline(loop, 0.02):
                await asyncio.sleep(5)
    assert not outer.expired()


async def test_misuse_is_an_error() -> None:
    loop = asyncio.get_running_loop()
    deadline = Deadline(loop, 1)
    with pytest.raises(RuntimeError):
        deadline.reschedule(loop.time() + 1)
    async with deadline:
        pass
    with pytest.raises(RuntimeError):
        async with deadline:
            pass
    with pytest.raises(RuntimeError):  # after its block: it would cancel the task later
        deadline.reschedule(loop.time() + 0.01)
