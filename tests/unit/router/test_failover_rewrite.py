"""Failover, pure parts: the resumed stream as the client sees it (ids, indices, finish
reasons, usage), and the whole round trip against an uninterrupted stream."""

from __future__ import annotations

import json
from typing import Any

from nebula_router.failover import Rewriter, plan_continuation, reassemble

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
WORDS = [" the", " nebula", " routes", " every", " request"]


def frame(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def chat_engine(cid: str, created: int, pieces: list[str], finish: str, usage: tuple[int, int],
                fingerprint: str | None = None) -> list[bytes]:
    """The frames an engine (vLLM-shaped) sends for a chat stream with include_usage."""
    def chunk(delta: dict[str, Any], fin: str | None = None) -> dict[str, Any]:
        obj: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk",
                               "created": created, "model": "m"}
        if fingerprint is not None:
            obj["system_fingerprint"] = fingerprint
        obj["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": fin}]
        return obj
    out = [frame(chunk({"role": "assistant", "content": ""}))]
    out += [frame(chunk({"content": p})) for p in pieces]
    out.append(frame(chunk({}, finish)))
    last = chunk({})
    last["choices"] = []
    last["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                     "total_tokens": sum(usage), "prompt_tokens_details": {"cached_tokens": 9}}
    out += [frame(last), b"data: [DONE]\n\n"]
    return out


def events(data: bytes) -> list[Any]:
    out = []
    for f in data.split(b"\n\n"):
        if f:
            text = f.removeprefix(b"data: ").decode()
            out.append(text if text == "[DONE]" else json.loads(text))
    return out


def text_of(evs: list[Any]) -> str:
    return "".join((c["delta"].get("content") or "") if "delta" in c else c.get("text", "")
                   for e in evs if isinstance(e, dict) for c in e["choices"])


def test_resumed_chat_stream_is_one_stream_with_usage_counted_once() -> None:
    whole = chat_engine("chatcmpl-A", 100, WORDS, "length", (10, 5), "fpA")
    cut = 3  # role chunk and the first two tokens reached the client
    sent = b"".join(whole[:cut])
    request = {"model": "m", "messages": [{"role": "user", "content": "q"}], "stream": True,
               "max_tokens": 5, "stream_options": {"include_usage": True}}
    state = reassemble(sent)
    plan = plan_continuation(CHAT, request, state)
    assert plan.body is not None and plan.body["max_tokens"] == 3
    # the second replica: its own id/created/fingerprint, a role chunk again, the prompt
    # now holds the 2 generated tokens
    second = chat_engine("chatcmpl-B", 200, WORDS[2:], "length", (12, 3), "fpB")
    rw = Rewriter(state, drop=plan.drop, finish_reason=plan.finish_reason)
    resumed = b"".join(rw.feed(f) for f in second)
    assert rw.ended
    evs = events(sent + resumed)
    undisturbed = events(b"".join(whole))
    assert text_of(evs) == text_of(undisturbed) == "".join(WORDS)
    chunks = [e for e in evs if isinstance(e, dict)]
    assert {(e["id"], e["created"], e["model"], e["system_fingerprint"]) for e in chunks} == {
        ("chatcmpl-A", 100, "m", "fpA")}
    roles = [c for e in chunks for c in e["choices"] if "role" in c["delta"]]
    assert len(roles) == 1
    finishes = [c["finish_reason"] for e in chunks for c in e["choices"] if c["finish_reason"]]
    assert finishes == ["length"]
    assert evs.count("[DONE]") == 1 and evs[-1] == "[DONE]"
    usage = [e["usage"] for e in chunks if e.get("usage")]
    assert usage == [{"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                      "prompt_tokens_details": {"cached_tokens": 9}}]
    assert all(c["index"] == 0 for e in chunks for c in e["choices"])


def test_a_second_resume_counts_every_token_the_client_got() -> None:
    whole = chat_engine("A", 1, WORDS, "stop", (10, 5))
    request = {"model": "m", "messages": [{"role": "user", "content": "q"}], "stream": True,
               "stream_options": {"include_usage": True}}
    sent = b"".join(whole[:2])  # role + " the"
    st = reassemble(sent)
    rw = Rewriter(st)
    sent += b"".join(rw.feed(f) for f in chat_engine("B", 2, WORDS[1:], "stop", (11, 4))[:3])
    st2 = reassemble(sent)  # the client has " the nebula routes"
    assert st2.tokens == 3 and st2.fingerprint == (False, None)
    body = plan_continuation(CHAT, request, st2).body
    assert body is not None and body["messages"][-1]["content"] == " the nebula routes"
    rw2 = Rewriter(st2)
    sent += b"".join(rw2.feed(f) for f in chat_engine("C", 3, WORDS[3:], "stop", (13, 2)))
    evs = events(sent)
    assert text_of(evs) == "".join(WORDS)
    assert {e["id"] for e in evs if isinstance(e, dict)} == {"A"}
    assert [e["usage"]["completion_tokens"] for e in evs if isinstance(e, dict)
            and e.get("usage")] == [5]
    assert [e["usage"]["prompt_tokens"] for e in evs if isinstance(e, dict)
            and e.get("usage")] == [10]
    assert not any("system_fingerprint" in e for e in evs if isinstance(e, dict))


def test_completions_resume_and_chunks_left_empty_are_dropped() -> None:
    def cmpl(cid: str, pieces: list[str], finish: str) -> list[bytes]:
        base = {"id": cid, "object": "text_completion", "created": 5, "model": "m"}
        out = [frame({**base, "choices": [{"index": 0, "text": p, "logprobs": None,
                                           "finish_reason": None}]}) for p in pieces]
        out.append(frame({**base, "choices": [{"index": 0, "text": "", "logprobs": None,
                                               "finish_reason": finish}]}))
        return [*out, b"data: [DONE]\n\n"]
    whole = cmpl("cmpl-A", WORDS, "length")
    sent = b"".join(whole[:1])
    st = reassemble(sent)
    request = {"model": "m", "prompt": "P", "stream": True, "max_tokens": 5}
    body = plan_continuation(COMPLETIONS, request, st).body
    assert body is not None and body["prompt"] == "P the" and body["max_tokens"] == 4
    rw = Rewriter(st)
    out = b"".join(rw.feed(f) for f in [b": keep-alive\n\n", frame(
        {"id": "cmpl-B", "object": "text_completion", "created": 6, "model": "m",
         "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": None}]}),
        *cmpl("cmpl-B", WORDS[1:], "length")])
    assert out.startswith(b": keep-alive\n\n")
    evs = [e for e in events(sent + out.removeprefix(b": keep-alive\n\n"))]
    assert text_of(evs) == "".join(WORDS)
    assert {e["id"] for e in evs if isinstance(e, dict)} == {"cmpl-A"}
    assert len([e for e in evs if isinstance(e, dict)]) == len(whole) - 1  # no empty chunk


def test_an_answer_missing_only_its_end() -> None:
    whole = chat_engine("A", 1, WORDS[:2], "length", (4, 2))
    request = {"model": "m", "messages": [{"role": "user", "content": "q"}], "stream": True,
               "max_tokens": 2}
    sent = b"".join(whole[:3])  # every token, no finish
    st = reassemble(sent)
    plan = plan_continuation(CHAT, request, st)
    assert plan.body is None
    end = Rewriter(st, drop=plan.drop, finish_reason=plan.finish_reason).local_end()
    evs = events(end)
    assert evs[-1] == "[DONE]" and evs[0]["choices"][0]["finish_reason"] == "length"
    assert evs[0]["id"] == "A" and evs[0]["choices"][0]["delta"] == {}
    # with usage asked: the one-token continuation's text is dropped, its usage kept
    request["stream_options"] = {"include_usage": True}
    plan = plan_continuation(CHAT, request, st)
    assert plan.body is not None and plan.drop
    rw = Rewriter(st, drop=True, finish_reason=plan.finish_reason)
    out = b"".join(rw.feed(f) for f in chat_engine("B", 2, [" extra"], "length", (6, 1)))
    evs = events(sent + out)
    assert text_of(evs) == " the nebula"
    assert next(e["usage"] for e in evs if isinstance(e, dict) and e.get("usage"))[
        "completion_tokens"] == 2
    assert [c["finish_reason"] for e in evs if isinstance(e, dict) for c in e["choices"]
            if c["finish_reason"]] == ["length"]


def test_an_engine_error_event_in_the_continuation_passes_through() -> None:
    st = reassemble(b"".join(chat_engine("A", 1, WORDS, "stop", (1, 1))[:2]))
    err = b'data: {"error": {"message": "boom"}}\n\n'
    assert Rewriter(st).feed(err) == err
