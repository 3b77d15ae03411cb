"""The byte relay that is the per-chunk table's floor (bench/relay.py), on loopback."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import aiohttp

from bench.relay import start
from devtools.cluster import REPO, free_port, http_get, wait_for


async def _relayed(upstream_port: int, body: bytes) -> list[tuple[int, bytes]]:
    """Two requests on one keep-alive connection through a relay in this loop."""
    port = free_port()
    out = []
    async with await start(port, "127.0.0.1", upstream_port), aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.post(f"http://127.0.0.1:{port}/v1/chat/completions", data=body) as r:
                out.append((r.status, await r.read()))
    return out


def test_the_relay_passes_a_paced_stream_byte_for_byte_both_ways() -> None:
    upstream = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.pacer", "--port", str(upstream),
                             "--chunks", "8", "--interval-ms", "5"], cwd=REPO,
                            start_new_session=True)
    try:
        wait_for(lambda: http_get(f"http://127.0.0.1:{upstream}/health")[0] == 200, 10,
                 "pacer")

        async def direct() -> bytes:
            async with aiohttp.ClientSession() as s, s.post(
                    f"http://127.0.0.1:{upstream}/v1/chat/completions",
                    data=b'{"model":"m","stream":true}') as r:
                return await r.read()

        expected = asyncio.run(direct())
        assert expected.rstrip().endswith(b"data: [DONE]")
        answers = asyncio.run(_relayed(upstream, b'{"model":"m","stream":true}'))
        assert answers == [(200, expected), (200, expected)]
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=10)


def test_a_client_of_a_relay_with_no_upstream_sees_its_connection_end() -> None:
    async def run() -> bytes:
        port = free_port()
        async with await start(port, "127.0.0.1", free_port()):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), 10)  # b"" once closed
            writer.close()
            return data

    assert asyncio.run(run()) == b""
