"""The sim engine as a real process, driven by the official openai client.

Covers the OpenAI endpoints (stream and not), faults (fail rate, crash, hang,
cut streams), cancellation on client disconnect, and the one-line start errors.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from devtools.cluster import BIN, Proc, free_port, http_get, http_post_json, wait_for

MODEL = "sim-model"
SimFactory = Callable[..., tuple[Proc, str]]


@pytest.fixture
def start_sim(tmp_path: Path) -> Iterator[SimFactory]:
    """Start ``nebula-sim`` on a free port with extra flags; stopped after the test."""
    procs: list[Proc] = []

    def start(*args: str) -> tuple[Proc, str]:
        port = free_port()
        proc = Proc(f"sim-{len(procs)}", [str(BIN / "nebula-sim"), "--host", "127.0.0.1",
                                          "--port", str(port), "--model-name", MODEL,
                                          "--served-model-name", "sim-alias",
                                          "--log-format", "text", *args],
                    tmp_path / f"sim-{len(procs)}.log").start()
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            if not proc.alive():
                raise RuntimeError(f"nebula-sim exited:\n{proc.log()[-2000:]}")
            return http_get(f"{url}/health")[0] == 200

        try:
            wait_for(healthy, 20, "nebula-sim /health")
        except RuntimeError as exc:
            pytest.fail(str(exc))
        return proc, url

    yield start
    for proc in procs:
        proc.stop(grace=3)


def client(url: str, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, **kwargs)


def stats(url: str) -> dict[str, Any]:
    status, body = http_get(f"{url}/sim/stats")
    assert status == 200
    return json.loads(body)


def test_openai_client_on_every_endpoint(start_sim: SimFactory) -> None:
    _, url = start_sim("--itl-ms", "1", "--output-tokens", "8")
    oa = client(url)
    assert {m.id for m in oa.models.list().data} == {MODEL, "sim-alias"}

    msgs = [{"role": "user", "content": "Say something about nebulas."}]
    full = oa.chat.completions.create(model=MODEL, messages=msgs)
    text = full.choices[0].message.content
    assert text and full.choices[0].finish_reason == "stop"
    assert full.usage.completion_tokens == 8

    chunks = list(oa.chat.completions.create(model=MODEL, messages=msgs, stream=True,
                                             stream_options={"include_usage": True}))
    assert len(chunks) >= 10  # role, 8 tokens, finish, usage
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text  # deterministic: same prompt, same text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.total_tokens == full.usage.total_tokens

    comp = oa.completions.create(model="sim-alias", prompt="Once upon", max_tokens=5)
    assert comp.choices[0].finish_reason == "length" and comp.usage.completion_tokens == 5
    comp_chunks = list(oa.completions.create(model=MODEL, prompt="Once upon", max_tokens=5,
                                             stream=True))
    assert "".join(c.choices[0].text for c in comp_chunks) == comp.choices[0].text

    emb = oa.embeddings.create(model=MODEL, input=["a", "b"], dimensions=12)  # base64 path
    assert [len(d.embedding) for d in emb.data] == [12, 12]
    again = oa.embeddings.create(model=MODEL, input="a", dimensions=12, encoding_format="float")
    assert again.data[0].embedding == pytest.approx(emb.data[0].embedding, rel=1e-6)

    resp = oa.responses.create(model=MODEL, input="Tell me a story", max_output_tokens=6)
    assert resp.status == "completed" and resp.output_text
    assert resp.usage.output_tokens == 6
    assert resp.usage.total_tokens == resp.usage.input_tokens + 6
    events = list(oa.responses.create(model=MODEL, input="Tell me a story",
                                      max_output_tokens=6, stream=True))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert types.count("response.output_text.delta") == 6
    assert types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == \
        resp.output_text
    assert events[-1].response.usage.total_tokens == resp.usage.total_tokens

    s = stats(url)
    assert s["by_path"] == {"/v1/chat/completions": 2, "/v1/completions": 2,
                            "/v1/embeddings": 2, "/v1/responses": 2}
    assert s["requests_success"] == 8 and (s["running"], s["waiting"]) == (0, 0)
    status, metrics = http_get(f"{url}/metrics")
    assert status == 200 and b"vllm:num_requests_running{" in metrics
    assert b"vllm:generation_tokens_total" in metrics


def test_traceparent_and_request_id_reach_the_engine(start_sim: SimFactory) -> None:
    proc, url = start_sim()
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    client(url).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}],
        extra_headers={"traceparent": tp, "x-request-id": "r-42"})
    assert stats(url)["last_request_headers"] == {"traceparent": tp, "x-request-id": "r-42"}
    assert proc.stop() == 0  # SIGTERM is a clean stop


def test_non_stream_client_timeout_cancels_the_request(start_sim: SimFactory) -> None:
    _, url = start_sim("--ttft-ms", "3000")
    with pytest.raises(openai.APITimeoutError):
        client(url, timeout=0.3).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}])
    wait_for(lambda: stats(url)["requests_cancelled"] == 1, 1.0, "cancellation seen by sim")
    assert stats(url)["running"] == 0


def test_fail_rate_one_answers_500_with_an_openai_error(start_sim: SimFactory) -> None:
    _, url = start_sim("--fail-rate", "1.0")
    with pytest.raises(openai.InternalServerError) as info:
        client(url).chat.completions.create(model=MODEL,
                                            messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 500
    assert info.value.body["type"] == "server_error"  # the SDK unwraps {"error": ...}
    assert stats(url)["requests_failed"] == 1
    # Cleared at run time: the next request succeeds.
    assert http_post_json(f"{url}/sim/faults", {"fail_rate": 0})[0] == 200
    client(url).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])


def test_crash_after_exits_the_process_hard(start_sim: SimFactory) -> None:
    proc, url = start_sim("--crash-after", "2")
    oa = client(url, timeout=5)
    oa.completions.create(model=MODEL, prompt="one")
    with pytest.raises(openai.APIConnectionError):
        oa.completions.create(model=MODEL, prompt="two")
    wait_for(lambda: not proc.alive(), 5, "sim process to exit")
    assert proc.popen.returncode == 1


def test_hang_never_answers_but_health_does(start_sim: SimFactory) -> None:
    _, url = start_sim("--hang")
    oa = client(url, timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                   stream=True)
    assert time.monotonic() - t0 < 5
    assert http_get(f"{url}/health")[0] == 200
    # The client gave up: the engine sees the request cancelled.
    wait_for(lambda: stats(url)["requests_cancelled"] == 1, 2, "hung request cancelled")
    # hang_health: /health stops answering too (a wedged engine).
    assert http_post_json(f"{url}/sim/faults", {"hang_health": True})[0] == 200
    with pytest.raises(OSError):  # socket timeout
        http_get(f"{url}/health", timeout=0.5)
    assert http_post_json(f"{url}/sim/faults", {"hang": False})[0] == 200
    assert http_get(f"{url}/health")[0] == 200
    assert client(url, timeout=5).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}]).choices


def test_client_disconnect_after_two_chunks_cancels_within_a_second(
        start_sim: SimFactory) -> None:
    _, url = start_sim("--itl-ms", "100")
    stream = client(url).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "long answer please"}],
        max_tokens=200, stream=True)
    received = []
    for chunk in stream:
        received.append(chunk)
        if len(received) == 2:
            break
    assert stats(url)["running"] == 1
    stream.close()
    closed = time.monotonic()
    wait_for(lambda: stats(url)["requests_cancelled"] == 1, 1.0, "cancellation seen by sim",
             interval=0.02)
    assert time.monotonic() - closed < 1.0
    s = stats(url)
    assert (s["running"], s["waiting"], s["requests_success"]) == (0, 0, 0)
    _, metrics = http_get(f"{url}/metrics")
    assert b'vllm:num_requests_running{engine="0",model_name="sim-model"} 0.0' in metrics
    assert (b'vllm:request_success_total{engine="0",finished_reason="abort",'
            b'model_name="sim-model"} 1.0') in metrics


@pytest.mark.parametrize("itl_ms", ["0", "5"])  # one write per stream, or paced writes
def test_stream_cut_drops_the_connection_mid_stream(start_sim: SimFactory, itl_ms: str) -> None:
    _, url = start_sim("--stream-cut-after", "3", "--itl-ms", itl_ms)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 20, "stream": True}
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=5)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body),
                     {"content-type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        with pytest.raises(http.client.IncompleteRead) as info:
            resp.read()  # the chunked body never gets its terminating chunk
    finally:
        conn.close()
    frames = [f for f in info.value.partial.decode().split("\n\n") if f.strip()]
    assert len(frames) == 3 and all(f.startswith("data: {") for f in frames)
    assert stats(url)["requests_failed"] == 1


def test_bad_flag_and_busy_port_are_one_line_errors() -> None:
    sim = str(BIN / "nebula-sim")
    bad = subprocess.run([sim, "--model-name", "m", "--ttft-ms", "soon"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "--ttft-ms" in bad.stderr
    missing = subprocess.run([sim, "--port", str(free_port())], capture_output=True, text=True,
                             timeout=30)
    assert missing.returncode == 2 and "--model-name" in missing.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        res = subprocess.run([sim, "--host", "127.0.0.1", "--port", str(port),
                              "--model-name", "m"], capture_output=True, text=True, timeout=30)
    assert res.returncode != 0
    assert len(res.stderr.strip().splitlines()) == 1 and "cannot listen" in res.stderr
