"""The checking transport's checks can fail: answers a misbehaving gateway could send."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.clients.openai_checking import Counts, checker_for, sse_data


def frames(events: list[dict[str, Any]], named: bool = True) -> bytes:
    return b"".join((f"event: {e['type']}\n" if named else "").encode()
                    + b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)


def run(path: str, body: bytes, streamed: bool = True, status: int = 200) -> Counts:
    counts = Counts()
    check = checker_for(path, status, streamed, counts)
    assert check is not None
    check(body)
    return counts


RESPONSE = {"id": "resp_1", "object": "response", "created_at": 1, "status": "completed",
            "model": "m", "output": [], "error": None, "incomplete_details": None,
            "instructions": None, "metadata": {}, "parallel_tool_calls": True,
            "temperature": 1.0, "top_p": 1.0, "tool_choice": "auto", "tools": []}


def test_a_good_stream_passes_and_is_counted() -> None:
    events = [{"type": "response.created", "sequence_number": 0, "response": RESPONSE},
              {"type": "response.completed", "sequence_number": 1, "response": RESPONSE}]
    counts = run("/v1/responses", frames(events))
    assert counts["responses.streams"] == 1 and counts["responses.events"] == 2


@pytest.mark.parametrize("events", [
    [{"type": "response.created", "response": RESPONSE}],  # no sequence_number
    [{"type": "response.created", "sequence_number": 0, "response": RESPONSE}],  # not ended
    [{"type": "response.output_text.delta", "sequence_number": 0, "delta": 7}],
    [{"type": "response.created", "sequence_number": 0, "response": RESPONSE},  # a gap
     {"type": "response.completed", "sequence_number": 2, "response": RESPONSE}],
])
def test_a_bad_responses_stream_fails(events: list[dict[str, Any]]) -> None:
    counts = Counts()
    check = checker_for("/v1/responses", 200, True, counts)
    assert check is not None
    with pytest.raises(AssertionError):
        check(frames(events))
    assert counts.failures and not counts["responses.streams"]


def test_an_event_line_must_name_its_data() -> None:
    body = b'event: response.completed\ndata: {"type": "response.created"}\n\n'
    with pytest.raises(AssertionError):
        sse_data(body)


def test_a_chat_stream_must_end_with_done() -> None:
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
    assert run("/v1/chat/completions", frames([chunk], named=False)
               + b"data: [DONE]\n\n")["chat.chunks"] == 1
    with pytest.raises(AssertionError):
        run("/v1/chat/completions", frames([chunk], named=False))


def test_an_error_must_be_openai_shaped() -> None:
    assert run("/v1/chat/completions", b'{"error": {"message": "no"}}', False, 400)["errors"]
    with pytest.raises(AssertionError):
        run("/v1/chat/completions", b'{"detail": "no"}', False, 400)
