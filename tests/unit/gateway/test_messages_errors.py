"""/v1/messages on the hot path, in process: every refusal Anthropic-shaped, the key in
``x-api-key``, and what reaches the router (a scripted one) for Messages and count_tokens."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from nebula_gateway.auth import load_keys
from nebula_gateway.config import GatewayConfig
from nebula_gateway.gateway import Gateway
from tests.clients.anthropic_schema import check_error, check_message
from tests.unit.gateway.asgi import NO_ROUTER, FakeRouter, call, post

MESSAGE = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


def anthropic_error(body: bytes, kind: str) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(body)
    assert parsed["type"] == "error" and parsed["error"]["type"] == kind, parsed
    assert parsed["request_id"] and set(parsed) == {"type", "error", "request_id"}
    if kind != "request_too_large":
        check_error(parsed)
    return parsed


async def test_refusals_before_a_router_are_anthropic_shaped() -> None:
    keyed = Gateway(GatewayConfig([NO_ROUTER], keys=load_keys(None, ["sk-1"])))
    answer = await post(keyed, "/v1/messages", MESSAGE)
    assert answer.status == 401
    anthropic_error(answer.body, "authentication_error")
    answer = await post(keyed, "/v1/messages", MESSAGE, {"x-api-key": "sk-2"})
    assert answer.status == 401
    # the right key in x-api-key gets as far as the (absent) router: 503, with Retry-After
    answer = await post(keyed, "/v1/messages", MESSAGE, {"x-api-key": "sk-1"})
    assert answer.status == 503 and answer.headers["retry-after"] == "1"
    anthropic_error(answer.body, "overloaded_error")
    # x-api-key works on the OpenAI paths as well, whose errors stay OpenAI's
    answer = await post(keyed, "/v1/completions", {"model": "m", "prompt": "x"},
                        {"x-api-key": "sk-1"})
    assert answer.status == 503 and answer.error["code"] == "router_unavailable"
    await keyed.pool.close()

    gateway = Gateway(GatewayConfig([NO_ROUTER], max_body_bytes=64, body_timeout=0.05))
    answer = await post(gateway, "/v1/messages", b"{nope")
    assert answer.status == 400
    anthropic_error(answer.body, "invalid_request_error")
    answer = await post(gateway, "/v1/messages/count_tokens", {"model": "m"})
    assert answer.status == 400
    assert "messages" in anthropic_error(answer.body, "invalid_request_error")["error"][
        "message"]
    answer = await call(gateway, "POST", "/v1/messages", [], {"content-length": "65"})
    assert answer.status == 413
    anthropic_error(answer.body, "request_too_large")
    answer = await call(gateway, "POST", "/v1/messages",
                        [{"type": "http.request", "body": b"{", "more_body": True}])
    assert answer.status == 408
    anthropic_error(answer.body, "timeout_error")
    await gateway.pool.close()


async def test_what_the_router_is_sent_and_what_comes_back() -> None:
    async def limited(request: web.Request) -> web.Response:
        if request.path == "/tokenize":
            return web.json_response({"count": 42, "max_model_len": 100, "tokens": []})
        body = json.loads(await request.read())
        if body["messages"][-1]["content"] == "busy":
            return web.json_response({"error": {"message": "no replica is ready",
                                                "type": "x", "code": "no_ready_replica"}},
                                     status=503, headers={"retry-after": "2"})
        return web.json_response({
            "id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": None, "tool_calls": [
                    {"id": "call-1", "type": "function",
                     "function": {"name": "f", "arguments": '{"a": 1}'}}]}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}})

    router = FakeRouter(answer=limited, models=[
        {"id": "m", "nebula": {"model_uid": "m-uid", "engine": "sim"}},
        {"id": "llama", "nebula": {"model_uid": "l-uid", "engine": "llamacpp"}}])
    async with router.running():
        gateway = Gateway(GatewayConfig([router.url]))
        tools = [{"name": "f", "input_schema": {"type": "object"}}]
        answer = await post(gateway, "/v1/messages", {**MESSAGE, "tools": tools})
        assert answer.status == 200, answer.body
        message = json.loads(answer.body)
        check_message(message)
        assert message["stop_reason"] == "tool_use"
        assert message["content"] == [{"type": "tool_use", "id": "call-1", "name": "f",
                                       "input": {"a": 1}}]
        assert message["usage"] == {"input_tokens": 9, "output_tokens": 4}
        sent = router.seen[-1]
        assert sent.path == "/v1/chat/completions"
        assert sent.headers["x-nebula-model-uid"] == "m-uid"
        assert json.loads(router.bodies[-1])["tools"][0]["function"]["name"] == "f"

        busy = {**MESSAGE, "messages": [{"role": "user", "content": "busy"}]}
        answer = await post(gateway, "/v1/messages", busy)
        assert answer.status == 503 and answer.headers["retry-after"] == "2"
        anthropic_error(answer.body, "overloaded_error")

        count = {"model": "m", "messages": MESSAGE["messages"]}
        answer = await post(gateway, "/v1/messages/count_tokens", count)
        assert answer.status == 200 and json.loads(answer.body) == {"input_tokens": 42}
        assert router.seen[-1].path == "/tokenize"
        assert json.loads(router.bodies[-1])["add_generation_prompt"] is True
        # no /tokenize on llama.cpp: the engine's count of the same prompt, one token generated
        answer = await post(gateway, "/v1/messages/count_tokens", {**count, "model": "llama"})
        assert answer.status == 200 and json.loads(answer.body) == {"input_tokens": 9}
        assert router.seen[-1].path == "/v1/chat/completions"
        assert json.loads(router.bodies[-1])["max_tokens"] == 1
        # /tokenize itself: passed through for the sim, a 400 for llama.cpp
        answer = await post(gateway, "/tokenize", {"model": "llama", "prompt": "x"})
        assert answer.status == 400 and answer.error["code"] == "model_not_supported"
        await gateway.pool.close()
