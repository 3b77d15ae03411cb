"""DisconnectWatcher: a client gone mid-request cancels the request, after the watch delay."""

from __future__ import annotations

import asyncio

from nebula_common.asgi import DisconnectWatcher, Message


async def test_a_quick_request_never_starts_a_watch() -> None:
    calls = 0

    async def receive() -> Message:
        nonlocal calls
        calls += 1
        return {"type": "http.disconnect"}

    watcher = DisconnectWatcher(receive, delay=0.05)
    await asyncio.sleep(0.01)  # done before the delay: nothing watched, nothing cancelled
    watcher.stop()
    await asyncio.sleep(0.08)
    assert calls == 0 and not watcher.disconnected


async def test_a_client_gone_early_is_seen_once_the_watch_starts() -> None:
    async def receive() -> Message:
        return {"type": "http.disconnect"}  # the server kept the event for whoever asks

    async def request() -> str:
        watcher = DisconnectWatcher(receive, delay=0.05)
        try:
            await asyncio.sleep(5)  # waiting on an engine
            return "answered"
        except asyncio.CancelledError:
            assert watcher.absorb()
            return "client gone"
        finally:
            watcher.stop()

    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await asyncio.wait_for(request(), 2) == "client gone"
    assert 0.04 <= loop.time() - started < 1


async def test_after_the_answer_a_disconnect_cancels_nothing() -> None:
    gone = asyncio.Event()

    async def receive() -> Message:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def request() -> str:
        watcher = DisconnectWatcher(receive, ignore=lambda: True, delay=0)
        await asyncio.sleep(0.01)
        gone.set()
        await asyncio.sleep(0.05)
        watcher.stop()
        return "done"

    assert await request() == "done"
