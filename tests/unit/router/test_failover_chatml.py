"""Failover for llama.cpp: a chat stream continued through /v1/completions on ChatML.

Pure parts (the rendering, checked against llama-cpp-python's own ``chatml`` formatter; the
continuation request; the completions-to-chat rewrite), then the proxy against a scripted
llama-shaped engine in this process whose chat stream breaks.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from nebula_common.capabilities import Capability
from nebula_common.records import Endpoint
from nebula_router import metrics
from nebula_router.failover import (
    NotResumable,
    Rewriter,
    Targets,
    can_continue,
    plan_continuation,
    reassemble,
    refusal,
)
from nebula_router.failover.chatml import IM_END, completion_body, render
from nebula_router.policy import Pipeline
from nebula_router.proxy import Proxy
from tests.support import needs
from tests.unit.router.test_proxy_engine import body_of
from tests.unit.router.test_proxy_parts import call, load, make_proxy

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
WORDS = [" the", " nebula", " routes", " every", " request"]
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
LLAMA = frozenset({Capability.CHAT, Capability.COMPLETIONS, Capability.CHATML_CONTINUATION})
VLLM = frozenset({Capability.CHAT, Capability.COMPLETIONS, Capability.CONTINUATION})

CONVERSATIONS: list[list[dict[str, Any]]] = [
    MESSAGES,
    [{"role": "user", "content": "no system message"}],
    [{"role": "system", "content": "first"}, {"role": "user", "content": "q1"},
     {"role": "assistant", "content": "a1"}, {"role": "system", "content": "second, ignored"},
     {"role": "user", "content": "q2"}],
    [{"role": "user", "content": ""}, {"role": "user", "content": "after an empty one"}],
    [*MESSAGES, {"role": "assistant", "content": "a prefill, closed by the server"}],
    [{"role": "user", "content": "uni\u00e7ode \U0001f680 and <|im_start|> text", "name": "x"}],
]


def frame(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def llama_chat(cid: str, pieces: list[str], finish: str) -> list[bytes]:
    """The frames llama-cpp-python's chat endpoint streams (role chunk first, no usage)."""
    def chunk(delta: dict[str, Any], fin: str | None = None) -> bytes:
        return frame({"id": cid, "model": "m1", "created": 7,
                      "object": "chat.completion.chunk",
                      "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                   "finish_reason": fin}]})
    return [chunk({"role": "assistant"}), *(chunk({"content": p}) for p in pieces),
            chunk({}, finish), b"data: [DONE]\n\n"]


def llama_completion(cid: str, pieces: list[str], finish: str) -> list[bytes]:
    """The frames its completions endpoint streams (the last one with empty text)."""
    def chunk(text: str, fin: str | None = None) -> bytes:
        return frame({"id": cid, "object": "text_completion", "created": 9, "model": "m1",
                      "choices": [{"text": text, "index": 0, "logprobs": None,
                                   "finish_reason": fin}]})
    return [*(chunk(p) for p in pieces), chunk("", finish), b"data: [DONE]\n\n"]


def events(data: bytes) -> list[Any]:
    out = []
    for f in data.split(b"\n\n"):
        if f.strip():
            text = f.removeprefix(b"data: ").decode()
            out.append(text if text == "[DONE]" else json.loads(text))
    return out


def test_render_is_the_servers_own_chatml() -> None:
    assert render(MESSAGES) == ("<|im_start|>system\nbe brief<|im_end|>\n"
                                "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    needs.module("llama_cpp", "make llamacpp builds and installs llama-cpp-python")
    from llama_cpp.llama_chat_format import format_chatml

    for messages in CONVERSATIONS:
        want = format_chatml(messages)
        assert render(messages) == want.prompt, messages
        assert want.stop == IM_END


@pytest.mark.parametrize("message, why", [
    ({"role": "tool", "content": "42", "tool_call_id": "c"}, "'tool' message"),
    ({"role": "user", "content": [{"type": "text", "text": "hi"}]}, "not a string"),
    ({"role": "user", "content": None}, "not a string"),
    ({"role": "assistant", "content": "", "tool_calls": [{"id": "c"}]}, "tool calls"),
    ("hi", "not an object"),
])
def test_what_chatml_cannot_render_exactly_is_refused(message: Any, why: str) -> None:
    with pytest.raises(NotResumable, match=why):
        render([*MESSAGES, message])


def test_the_llama_continuation_is_a_completion_of_the_rendered_chat() -> None:
    request = {"model": "m", "messages": MESSAGES, "stream": True, "max_tokens": 10,
               "max_completion_tokens": 12, "temperature": 0, "seed": 7, "top_p": 0.5,
               "stop": "END", "stream_options": {"include_usage": True}, "min_tokens": 4,
               "repeat_penalty": 1.2}
    state = reassemble(b"".join(llama_chat("c", WORDS, "stop")[:4]))
    plan = plan_continuation(CHAT, request, state)
    assert plan.text == " the nebula routes"
    body = completion_body(request, plan)
    assert body["prompt"] == render(MESSAGES) + " the nebula routes"
    assert body["prompt"].endswith("<|im_start|>assistant\n the nebula routes")
    assert body["max_tokens"] == 7 and body["min_tokens"] == 1
    assert body["stop"] == ["END", IM_END]
    for same in ("model", "stream", "temperature", "seed", "top_p", "stream_options",
                 "repeat_penalty"):
        assert body[same] == request[same]
    for chat_only in ("messages", "max_completion_tokens", "continue_final_message",
                      "add_generation_prompt"):
        assert chat_only not in body
    assert request["messages"] == MESSAGES and request["stop"] == "END"  # not mutated


def test_budgets_and_stops_as_the_chat_endpoint_reads_them() -> None:
    state = reassemble(b"".join(llama_chat("c", WORDS, "stop")[:2]))
    # no max_tokens: the chat endpoint's default is no limit, completions' would be 16
    request: dict[str, Any] = {"model": "m", "messages": MESSAGES, "stream": True,
                               "stop": ["a", "b"], "max_completion_tokens": 3}
    body = completion_body(request, plan_continuation(CHAT, request, state))
    assert body["max_tokens"] is None and body["stop"] == ["a", "b", IM_END]
    # a break before any text: the rendered chat with its generation prompt, nothing else
    empty = reassemble(b"".join(llama_chat("c", WORDS, "stop")[:1]))
    body = completion_body(request, plan_continuation(CHAT, request, empty))
    assert body["prompt"] == render(MESSAGES)
    # only the usage was missing: one token asked, its text dropped
    spent = {**request, "max_tokens": 1, "stream_options": {"include_usage": True}}
    plan = plan_continuation(CHAT, spent, reassemble(b"".join(llama_chat("c", WORDS, "stop")[:2])))
    assert plan.drop and completion_body(spent, plan)["max_tokens"] == 1


def test_the_replicas_declaration_picks_the_request_vllm_keeps_its_own() -> None:
    request = {"model": "m", "messages": MESSAGES, "stream": True, "max_tokens": 8}
    state = reassemble(b"".join(llama_chat("c", WORDS, "stop")[:3]))
    targets = Targets(CHAT, request, plan_continuation(CHAT, request, state))
    llama = targets.for_replica(LLAMA)
    assert llama.path == COMPLETIONS and llama.from_completions
    assert json.loads(llama.body)["prompt"] == render(MESSAGES) + " the nebula"
    for caps in (VLLM, None, LLAMA | {Capability.CONTINUATION}):
        native = targets.for_replica(caps)
        body = json.loads(native.body)
        assert native.path == CHAT and not native.from_completions
        assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
        assert body["messages"][-1] == {"role": "assistant", "content": " the nebula"}
    with pytest.raises(NotResumable):
        targets.for_replica(frozenset({Capability.CHAT}))
    # completions streams continue natively on llama.cpp
    creq = {"model": "m", "prompt": "P", "stream": True, "max_tokens": 5}
    cstate = reassemble(b"".join(llama_completion("x", WORDS, "length")[:2]))
    target = Targets(COMPLETIONS, creq, plan_continuation(COMPLETIONS, creq, cstate)
                     ).for_replica(LLAMA)
    assert target.path == COMPLETIONS and not target.from_completions
    assert json.loads(target.body)["prompt"] == "P the nebula"


@pytest.mark.parametrize("extra", [
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
    {"grammar": "root ::= \"x\""},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
])
def test_a_request_chatml_cannot_carry_goes_to_no_llama_replica(extra: dict[str, Any]) -> None:
    request = {"model": "m", "messages": MESSAGES, "stream": True, **extra}
    assert not can_continue(LLAMA, CHAT, request)
    assert can_continue(VLLM, CHAT, request) and can_continue(None, CHAT, request)
    state = reassemble(b"".join(llama_chat("c", WORDS, "stop")[:3]))
    with pytest.raises(NotResumable):
        completion_body(request, plan_continuation(CHAT, request, state))
    # the stream is refused (not "failed") when only such replicas serve the model
    assert refusal([LLAMA, LLAMA], CHAT, request)
    assert not refusal([LLAMA, VLLM], CHAT, request) and not refusal([LLAMA, None], CHAT, request)
    assert not refusal([frozenset({Capability.CHAT})], CHAT, request)  # no way declared


def test_completions_chunks_are_rewritten_into_the_clients_chat_stream() -> None:
    whole = llama_chat("chatcmpl-A", WORDS, "stop")
    sent = b"".join(whole[:3])  # role, " the", " nebula"
    state = reassemble(sent)
    rw = Rewriter(state)
    rw.from_completions = True
    resumed = b"".join(rw.feed(f) for f in [b": ping\n\n",
                                            *llama_completion("cmpl-B", WORDS[2:], "stop")])
    assert rw.ended and resumed.startswith(b": ping\n\n")
    got = events(sent + resumed.removeprefix(b": ping\n\n"))
    assert got == events(b"".join(whole))  # exactly what the undisturbed stream sends
    chunks = [e for e in got if isinstance(e, dict)]
    assert {(c["id"], c["created"], c["object"]) for c in chunks} == {
        ("chatcmpl-A", 7, "chat.completion.chunk")}


def test_a_client_without_a_role_delta_gets_one_from_the_rewrite() -> None:
    state = reassemble(b"".join(llama_chat("A", WORDS, "stop")[1:3]))  # no role chunk
    rw = Rewriter(state)
    rw.from_completions = True
    out = events(b"".join(rw.feed(f) for f in llama_completion("B", WORDS[2:], "length")))
    deltas = [c["delta"] for e in out if isinstance(e, dict) for c in e["choices"]]
    assert deltas[0] == {"role": "assistant", "content": " routes"}
    assert sum("role" in d for d in deltas) == 1 and out[-1] == "[DONE]"


@pytest.fixture
async def llama_engine() -> AsyncIterator[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    """A loopback llama-shaped engine: the first chat stream breaks after two tokens; the
    completions endpoint answers the rest of the text its prompt does not hold yet."""
    seen: list[tuple[str, dict[str, Any]]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append((request.path, body))
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        if request.path == CHAT:
            for f in llama_chat("chatcmpl-A", WORDS, "stop")[:3]:
                await resp.write(f)
            assert request.transport is not None
            request.transport.close()  # killed mid-stream
            return resp
        done = body["prompt"].removeprefix(render(MESSAGES)).count(" ")
        for f in llama_completion("cmpl-B", WORDS[done:], "stop"):
            await resp.write(f)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post(CHAT, handler)
    app.router.add_post(COMPLETIONS, handler)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # bound above
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_the_proxy_resumes_a_llama_chat_stream_through_completions(
        llama_engine: tuple[str, list[tuple[str, dict[str, Any]]]]) -> None:
    url, seen = llama_engine
    proxy: Proxy = make_proxy(Pipeline.build("round_robin"), retry_initial_s=0.0,
                              retry_max_s=0.0)
    load(proxy.table, *(Endpoint("m1", "m1", str(i), "n1", url, "llamacpp",
                                 capabilities=sorted(LLAMA)) for i in range(2)))
    await proxy.start()
    try:
        sent = await call(proxy, [json.dumps({
            "model": "m1", "messages": MESSAGES, "stream": True, "max_tokens": 8,
            "temperature": 0}).encode()])
    finally:
        await proxy.close()
    assert sent[0]["status"] == 200
    assert events(body_of(sent)) == events(b"".join(llama_chat("chatcmpl-A", WORDS, "stop")))
    assert [path for path, _ in seen] == [CHAT, COMPLETIONS]
    cont = seen[1][1]
    assert cont["prompt"] == render(MESSAGES) + " the nebula"
    assert cont["max_tokens"] == 6 and cont["stop"] == [IM_END] and "messages" not in cont


async def test_tools_on_llama_replicas_end_with_the_error_event_as_refused(
        llama_engine: tuple[str, list[tuple[str, dict[str, Any]]]]) -> None:
    url, seen = llama_engine
    proxy: Proxy = make_proxy(Pipeline.build("round_robin"))
    load(proxy.table, *(Endpoint("m1", "m1", str(i), "n1", url, "llamacpp",
                                 capabilities=sorted(LLAMA)) for i in range(2)))
    await proxy.start()
    before = metrics.STREAM_RESUMES.labels("refused")._value.get()
    try:
        sent = await call(proxy, [json.dumps({
            "model": "m1", "messages": MESSAGES, "stream": True, "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {}}}]}).encode()])
    finally:
        await proxy.close()
    assert events(body_of(sent))[-1]["error"]["code"] == "upstream_stream_error"
    assert [path for path, _ in seen] == [CHAT]
    assert metrics.STREAM_RESUMES.labels("refused")._value.get() == before + 1
