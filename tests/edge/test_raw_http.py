"""Hostile HTTP at the gateway, over raw sockets (no client library smoothing things over).

Each case must be refused with a 4xx (or, for a body that never comes, refused or
closed) within the configured bound, with nothing in the gateway's log that says
it crashed, and the gateway must answer the next good request.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass

import pytest

from tests.edge.conftest import BODY_TIMEOUT, MAX_BODY, MODEL, Edge

PATH = "/v1/chat/completions"


@dataclass
class RawAnswer:
    status: int | None
    head: bytes
    body: bytes
    seconds: float
    closed: bool

    def json(self) -> dict:
        body = self.body
        if b"transfer-encoding: chunked" in self.head.lower():
            body = dechunk(body)
        return json.loads(body)


def dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return out


def exchange(edge: Edge, parts: list[bytes], timeout: float = 15.0,
             pause: float = 0.0) -> RawAnswer:
    """Send ``parts`` (``pause`` seconds apart), read until the server closes or ``timeout``."""
    started = time.monotonic()
    data = b""
    closed = False
    with socket.create_connection((edge.host, edge.port), timeout=timeout) as sock:
        try:
            for i, part in enumerate(parts):
                if i and pause:
                    time.sleep(pause)
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may refuse before reading everything: read its answer
        deadline = started + timeout
        while time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            data += chunk
            if _complete(data):
                break
    head, _, body = data.partition(b"\r\n\r\n")
    status = None
    if head.startswith(b"HTTP/1."):
        status = int(head.split(b" ", 2)[1])
    return RawAnswer(status, head, body, time.monotonic() - started, closed)


def _complete(data: bytes) -> bool:
    """A full response with a content-length (the server may keep the connection open)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def request_head(length: int | None, extra: str = "", path: str = PATH) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: gateway", "Content-Type: application/json",
             "Connection: close"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if extra:
        lines.append(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post(edge: Edge, body: bytes, path: str = PATH, **kw) -> RawAnswer:
    return exchange(edge, [request_head(len(body), path=path) + body], **kw)


def assert_openai_error(answer: RawAnswer, *statuses: int) -> dict:
    assert answer.status in statuses, (answer.status, answer.head[:300], answer.body[:300])
    err = answer.json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    return err


@pytest.fixture(autouse=True)
def still_healthy(edge: Edge):
    """After every hostile case the gateway answers a good request, and logs no crash."""
    log_before = len(edge.cluster.procs["gateway"].log())
    yield
    status, body = edge.good_request()
    assert status == 200, body[:300]
    assert json.loads(body)["choices"][0]["finish_reason"]
    new_log = edge.cluster.procs["gateway"].log()[log_before:]
    assert "Traceback" not in new_log and "RecursionError" not in new_log, new_log[-3000:]
    assert edge.cluster.procs["gateway"].alive()


def test_oversize_body_with_content_length(edge: Edge) -> None:
    body = json.dumps({"model": MODEL, "messages": [
        {"role": "user", "content": "x" * (MAX_BODY + 10)}]}).encode()
    answer = post(edge, body)
    err = assert_openai_error(answer, 413)
    assert err["code"] == "request_too_large"


def test_oversize_content_length_refused_before_the_body(edge: Edge) -> None:
    """A declared length over the limit is refused without waiting for any body byte."""
    answer = exchange(edge, [request_head(MAX_BODY * 100)], timeout=BODY_TIMEOUT + 5)
    assert_openai_error(answer, 413)
    assert answer.seconds < BODY_TIMEOUT, answer.seconds


def test_oversize_chunked_body(edge: Edge) -> None:
    """No content-length, chunked: the limit still holds."""
    chunk = b"x" * 16384
    parts = [request_head(None, "Transfer-Encoding: chunked")]
    parts += [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (MAX_BODY // len(chunk) + 2)
    parts.append(b"0\r\n\r\n")
    answer = exchange(edge, parts)
    assert_openai_error(answer, 413)


def test_slow_body_is_cut_within_the_body_timeout(edge: Edge) -> None:
    """Headers announce 200 bytes, then nothing: refused (408/400) or closed in time."""
    answer = exchange(edge, [request_head(200) + b'{"model":'], timeout=BODY_TIMEOUT + 10)
    assert answer.seconds < BODY_TIMEOUT + 3, (
        f"the gateway held a body-less request for {answer.seconds:.1f}s "
        f"(--body-timeout {BODY_TIMEOUT}); answer {answer.status} closed={answer.closed}")
    assert answer.closed or answer.status is not None
    if answer.status is not None:
        assert 400 <= answer.status < 500, answer.head


def test_huge_headers(edge: Edge) -> None:
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    head = request_head(len(body), "X-Huge: " + "a" * 200_000)
    answer = exchange(edge, [head + body.encode()])
    assert answer.status is not None, (
        f"huge headers got no HTTP answer at all (closed={answer.closed}): expected 431/400")
    assert answer.status in (400, 413, 431), answer.head


def test_many_headers(edge: Edge) -> None:
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    extra = "\r\n".join(f"X-H{i}: {'v' * 100}" for i in range(2000))
    answer = exchange(edge, [request_head(len(body), extra) + body.encode()])
    assert answer.status is not None, "many headers got no HTTP answer at all"
    assert answer.status in (400, 413, 431), answer.head


@pytest.mark.parametrize("body", [
    b'{"model": "\xff\xfe", "messages": [{"role": "user", "content": "hi"}]}',
    b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "\xc3\x28"}]}',
    b'\xef\xbb\xbf\xff{"model": 1}',
], ids=["bad-model-bytes", "bad-content-bytes", "garbage"])
def test_invalid_utf8_body(edge: Edge, body: bytes) -> None:
    assert_openai_error(post(edge, body), 400)


@pytest.mark.parametrize("depth", [1000, 30_000])  # 30k levels: 60 KB, under the limit
def test_deeply_nested_json(edge: Edge, depth: int) -> None:
    body = b"[" * depth + b"]" * depth
    assert_openai_error(post(edge, body), 400)


def test_deeply_nested_inside_messages(edge: Edge) -> None:
    depth = 10_000
    nested = '{"a":' * depth + "1" + "}" * depth
    body = ('{"model": "' + MODEL + '", "messages": [{"role": "user", "content": '
            + nested + "}]}").encode()
    if len(body) > MAX_BODY:
        pytest.fail("test body must stay under the limit to reach the JSON parser")
    assert_openai_error(post(edge, body), 400)


@pytest.mark.parametrize("body", [
    b"", b"null", b"[]", b'"text"', b"{", b'{"model": }', b'{"model": NaN}',
    b'{"model": "' + MODEL.encode() + b'", "messages": "not a list"}',
    b'{"model": "' + MODEL.encode() + b'", "messages": [], "max_tokens": -1}',
    b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": 5}]}',
    b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "a"}], '
    b'"max_tokens": 1e400}',
], ids=["empty", "null", "array", "string", "truncated", "bad-token", "nan", "messages-str",
        "empty-messages", "role-int", "huge-float"])
def test_malformed_json_is_400(edge: Edge, body: bytes) -> None:
    answer = post(edge, body)
    assert answer.status is not None and 400 <= answer.status < 500, (answer.status, answer.body)


def test_get_on_a_post_path_is_405(edge: Edge) -> None:
    """RFC 9110 15.5.6: the resource exists, the method does not (OpenAI answers 405 too)."""
    answer = exchange(edge, [b"GET " + PATH.encode() + b" HTTP/1.1\r\nHost: g\r\n"
                             b"Connection: close\r\n\r\n"])
    assert_openai_error(answer, 405)


def test_unknown_path_is_404(edge: Edge) -> None:
    answer = exchange(edge, [b"POST /v1/nope HTTP/1.1\r\nHost: g\r\nContent-Length: 2\r\n"
                             b"Connection: close\r\n\r\n{}"])
    assert answer.status == 404, answer.head


def test_garbage_request_line(edge: Edge) -> None:
    answer = exchange(edge, [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n"],
                      timeout=5)
    # A TLS hello or junk: a 400 or a closed connection, never a hang.
    assert answer.closed or (answer.status is not None and 400 <= answer.status < 500)
    assert answer.seconds < 5


def test_absurd_embedding_dimensions(edge: Edge) -> None:
    """``dimensions`` far above any model's size is refused (vLLM answers 400), quickly.

    One million stays harmless if the bound is missing (a 1M-float vector); the value
    schemathesis found, 4450812415, would block the engine and exhaust memory.
    """
    body = json.dumps({"model": MODEL, "input": "hi", "dimensions": 1_000_000}).encode()
    answer = post(edge, body, path="/v1/embeddings", timeout=20)
    assert answer.seconds < 5, f"took {answer.seconds:.1f}s"
    assert_openai_error(answer, 400)


def test_doubled_slash_path_is_404(edge: Edge) -> None:
    """Not routed as the single-slash path (a POST the hot path never saw: a 500)."""
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}]}).encode()
    for path in ("//v1/chat/completions", "/v1//chat/completions"):
        err = assert_openai_error(post(edge, body, path=path), 404)
        assert err["code"] == "not_found"


@pytest.mark.parametrize(("item", "param"), [
    ({"type": "function_call_output", "call_id": "c", "output": [1]}, "input[0].output[0]"),
    ({"role": "user", "content": [{"type": "input_text", "text": 5}]},
     "input[0].content[0].text"),
    ({"role": "user", "content": [{"type": "input_image", "image_url":
                                   "http://169.254.169.254/latest/meta-data/"}]},
     "input[0].content[0].image_url"),
], ids=["output-ints", "text-int", "metadata-url"])
def test_responses_input_the_engine_must_not_see(edge: Edge, item: dict, param: str) -> None:
    body = json.dumps({"model": MODEL, "input": [item]}).encode()
    err = assert_openai_error(post(edge, body, path="/v1/responses"), 400)
    assert err["param"] == param, err
