"""The stand-in engines' fixed bodies, nginx config and the paced SSE server (bench/)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import aiohttp
import pytest

from bench.harness import Replica, registration_records
from bench.pacer import frames, parse_head
from bench.standin import (
    CHUNKS,
    chat_completion_body,
    nginx_binary,
    nginx_config,
    nginx_quote,
    sse_stream_body,
    write_nginx_files,
)
from devtools.cluster import REPO, free_port, http_get, wait_for
from nebula_common.keys import Keys
from nebula_common.records import Endpoint, EndpointStats, PlacementPlan
from tests.support import needs


def sse_payloads(body: bytes) -> list[str]:
    return [f[len(b"data: "):].decode() for f in body.split(b"\n\n") if f.startswith(b"data: ")]


def test_chat_body_is_an_openai_chat_completion():
    body = json.loads(chat_completion_body("m"))
    assert body["object"] == "chat.completion" and body["model"] == "m"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["total_tokens"] == 10


def test_sse_body_has_64_content_chunks_usage_and_done():
    payloads = sse_payloads(sse_stream_body("m"))
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    content = [c for c in chunks if c["choices"]]
    assert len(content) == CHUNKS == 64
    assert content[0]["choices"][0]["delta"]["role"] == "assistant"
    assert content[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 64


def test_nginx_quote_escapes_and_refuses_variables():
    assert nginx_quote(b"a'b\\c\nd") == "'a\\'b\\\\c\\nd'"
    with pytest.raises(ValueError):
        nginx_quote(b"costs $5")


def test_nginx_config_keeps_every_path_in_the_run_dir(tmp_path):
    conf = nginx_config(tmp_path, 12345, as_root=False)
    assert "listen 127.0.0.1:12345" in conf
    assert "daemon off;" in conf and "user " not in conf
    assert f"pid {tmp_path}/nginx.pid;" in conf
    assert "user root root;" in nginx_config(tmp_path, 1, as_root=True)


def test_nginx_serves_both_bodies(tmp_path):
    nginx = needs.binary("nginx", "make bench-tools installs it (Debian's nginx-light)",
                         nginx_binary())
    port = free_port()
    conf = write_nginx_files(tmp_path, port, "m")
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp_path), "-e",
                             str(tmp_path / "error.log")], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/health")[0] == 200, 10, "nginx")

        async def post(agent: str) -> tuple[int, str, bytes]:
            async with aiohttp.ClientSession() as s, s.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    data=b'{"model":"m","messages":[]}', headers={"user-agent": agent}) as r:
                return r.status, r.headers["content-type"], await r.read()

        status, ctype, body = asyncio.run(post("anything"))
        assert (status, ctype, body) == (200, "application/json", chat_completion_body("m"))
        status, ctype, body = asyncio.run(post("nebula-bench-stream"))
        assert (status, ctype, body) == (200, "text/event-stream", sse_stream_body("m"))
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=10)


def test_pacer_frames_are_chunked_sse_ending_the_body():
    out = frames("m", 3)
    assert len(out) == 3
    assert out[0].startswith(b"%x\r\ndata: {" % (len(out[0].split(b"\r\n", 1)[1]) - 2))
    assert out[-1].endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    assert b'"usage"' in out[-1]


def test_pacer_parse_head():
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 12"
    assert parse_head(head) == (b"POST", b"/v1/chat/completions", 12)
    assert parse_head(b"GET /health HTTP/1.1\r\nhost: x") == (b"GET", b"/health", 0)


def test_pacer_spaces_chunks_and_keeps_the_connection_alive():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.pacer", "--port", str(port),
                             "--chunks", "8", "--interval-ms", "20"], cwd=REPO,
                            start_new_session=True)
    try:
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/health")[0] == 200, 10, "pacer")

        async def two_streams() -> list[tuple[float, int, bytes]]:
            loop = asyncio.get_running_loop()
            out = []
            async with aiohttp.ClientSession() as s:
                for _ in range(2):  # the second request reuses the connection
                    started = loop.time()
                    async with s.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                                      data=b'{"model":"m","stream":true}') as r:
                        reads = 0
                        body = b""
                        async for part in r.content.iter_any():
                            reads += 1
                            body += part
                        out.append((loop.time() - started, reads, body))
            return out

        for elapsed, reads, body in asyncio.run(two_streams()):
            payloads = sse_payloads(body)
            assert payloads[-1] == "[DONE]" and len(payloads) == 8 + 2
            assert 0.12 <= elapsed < 2.0       # 7 gaps of 20 ms
            assert reads >= 4                  # spaced out, not one burst
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=10)


def test_registration_records_look_like_a_nodes_and_a_schedulers():
    keys = Keys("")
    recs = registration_records(keys, "m", "vllm", [Replica("m", "vllm", "r0", 4000),
                                                    Replica("m", "vllm", "r1", 4001)])
    plan = PlacementPlan.from_json(recs["/placements/m"])
    assert [a.replica_id for a in plan.assignments] == ["r0", "r1"]
    ep = Endpoint.from_json(recs["/endpoints/m/r1"])
    assert ep.status == "ready" and ep.base_url == "http://127.0.0.1:4001" and ep.engine == "vllm"
    assert EndpointStats.from_json(recs["/stats/m/r0"]).running == 0
