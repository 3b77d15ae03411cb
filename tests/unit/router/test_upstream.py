"""What the proxy reads in upstream bytes: request refusals, and where SSE frames end."""

from __future__ import annotations

import json

import pytest

from nebula_common.sse import MAX_PARTIAL_FRAME, ends_a_frame, frame_end, split_frames
from nebula_router.upstream import refuses_request

LLAMA_CPP_PYTHON = json.dumps({"error": {
    "message": "Llama model must be created with embedding=True to call this method",
    "type": "internal_server_error", "param": None, "code": None}}).encode()
LLAMA_SERVER = json.dumps({"error": {
    "code": 501, "type": "not_supported_error",
    "message": "This server does not support embeddings. Start it with `--embeddings`"}}).encode()
VLLM_OLD = json.dumps({"object": "error", "message": "bad", "type": "BadRequestError",
                       "param": None, "code": 400}).encode()
SIM_FAULT = json.dumps({"error": {"message": "simulated engine failure (fail_rate fault)",
                                  "type": "server_error", "param": None,
                                  "code": "sim_fault"}}).encode()


@pytest.mark.parametrize(("status", "body"), [
    (500, LLAMA_CPP_PYTHON),
    (500, LLAMA_SERVER),
    (501, LLAMA_SERVER),
    (501, b""),
    (500, VLLM_OLD),
    (500, b'{"error": "pooling is not supported by this model"}'),
    (500, b'{"error": {"message": "x", "type": "x", "code": "422"}}'),
])
def test_answers_that_refuse_the_request_itself(status: int, body: bytes) -> None:
    assert refuses_request(status, body)


@pytest.mark.parametrize(("status", "body"), [
    (500, SIM_FAULT),
    (500, b"Traceback (most recent call last): ..."),
    (500, b""),
    (500, b"[1]"),
    (500, b'{"error": 5}'),
    (500, b"[" * 100_000 + b"]" * 100_000),  # too deep to parse: not a refusal
    (502, LLAMA_SERVER), (503, LLAMA_CPP_PYTHON), (504, VLLM_OLD), (429, VLLM_OLD),
])
def test_replica_faults_are_not_refusals(status: int, body: bytes) -> None:
    assert not refuses_request(status, body)


def test_split_frames_holds_back_the_start_of_a_frame_in_every_line_ending() -> None:
    for end in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        whole = b"data: {\"a\": 1}" + end
        assert split_frames(whole) == (whole, b"")
        assert split_frames(whole + b"data: {\"b\"") == (whole, b"data: {\"b\"")
        assert split_frames(b"data: {\"b\"") == (b"", b"data: {\"b\"")
        assert frame_end(whole + whole + b"data") == 2 * len(whole)
        assert ends_a_frame(whole) and not ends_a_frame(whole + b"da")
    # a CRLF frame end split across reads: "\r\n\r" is not an end yet
    assert split_frames(b"data: x\r\n\r") == (b"", b"data: x\r\n\r")
    assert ends_a_frame(b"")


def test_a_frame_over_the_bound_is_passed_on_not_held() -> None:
    huge = b"data: " + b"x" * (MAX_PARTIAL_FRAME + 1)
    assert split_frames(huge) == (huge, b"")
    assert split_frames(b"data: 1\n\n" + huge) == (b"data: 1\n\n" + huge, b"")
