"""``/v1/messages`` and ``/v1/messages/count_tokens``: Anthropic's Messages API.

Every engine is sent the equivalent chat completions request and its answer is
translated back (:mod:`messages_translate`); none is sent Messages natively (no adapter
declares it: docs/api.md). Keys, limits, validation, the model check and tracing are the hot path's,
as for the OpenAI paths; every error on these paths is Anthropic-shaped
(:func:`anthropic_error`, which :mod:`gateway` applies to its refusals too).

count_tokens counts with the engine's tokenizer: its ``/tokenize`` where it has one
(vLLM, the sim), else the prompt tokens the engine reports for the same request
generating one token (llama.cpp).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from nebula_common.asgi import JSON_CONTENT_TYPE, RawHeaders
from nebula_common.http_client import Response
from nebula_common.sse import sse_event

from . import messages_translate as translate
from .catalog import ModelInfo
from .outcome import Outcome
from .reply import Reply, buffered, stream_reply
from .sse import ChatStreamRelay, decoded
from .tokens import can_tokenize
from .validation import ValidationError

if TYPE_CHECKING:
    from .gateway import Gateway

MESSAGES_PATHS = frozenset({"/v1/messages", "/v1/messages/count_tokens"})
"""The paths whose errors are Anthropic's shape."""

CHAT = "/v1/chat/completions"


def anthropic_error(path: str, status: int, body: bytes, request_id: str) -> bytes:
    """``body`` (an OpenAI error) as Anthropic's on the Messages paths, else unchanged."""
    if path not in MESSAGES_PATHS:
        return body
    return translate.reshaped_error(status, body, request_id)


async def admitted(gateway: Gateway, path: str, raw: bytes, outcome: Outcome
                   ) -> tuple[dict[str, Any], ModelInfo]:
    """The validated body and its model (one that serves chat completions: the admission
    checks it), with every image URL past the media policy."""
    body, info = await gateway.admit(path, raw, outcome)
    policy = gateway.config.media
    for param, url in translate.media_urls(body):
        problem = policy.refusal(url)
        if problem is not None:
            raise ValidationError(400, param + problem, param, "media_url_not_allowed")
    if outcome.span.is_recording():
        outcome.span.set_attribute("nebula.messages.translated", True)
    return body, info


def _json_reply(status: int, payload: Any) -> Reply:
    return Reply(status, [JSON_CONTENT_TYPE], json.dumps(payload).encode())


def _upstream_error(outcome: Outcome, status: int, data: bytes, headers: RawHeaders
                    ) -> Reply:
    """The router's (or engine's) error as Anthropic's, with its Retry-After if any."""
    kept = [h for h in headers if h[0] != b"content-type"]
    return Reply(status, [*kept, JSON_CONTENT_TYPE],
                 translate.reshaped_error(status, data, outcome.request_id))


async def handle(gateway: Gateway, path: str, headers: Mapping[str, str], raw: bytes,
                 outcome: Outcome) -> Reply:
    """POST /v1/messages."""
    body, _info = await admitted(gateway, path, raw, outcome)
    chat = translate.messages_to_chat(body)
    upstream = await gateway.forward(outcome, headers, CHAT, json.dumps(chat).encode())
    if body.get("stream") is True and upstream.status == 200 and \
            upstream.content_type == "text/event-stream":
        return stream_reply(upstream, message_frames(outcome, upstream, body),
                            gateway.response_headers)
    status, data, out_headers = await buffered(outcome, upstream, gateway.response_headers)
    if status != 200:
        return _upstream_error(outcome, status, data, out_headers)
    parsed = decoded(data)
    if not isinstance(parsed, dict):
        return _json_reply(502, translate.error_body(
            502, "the engine answered with invalid JSON", outcome.request_id))
    if not outcome.usage(parsed.get("usage")):
        outcome.note = "engine sent no usage"
    return _json_reply(200, translate.chat_to_message(parsed, body))


async def message_frames(outcome: Outcome, upstream: Response,
                         body: dict[str, Any]) -> AsyncIterator[bytes]:
    """Chat completion chunks in, the Messages event sequence out."""
    stream = translate.MessageStream(body)
    relay = ChatStreamRelay(stream, sse_event)
    async for out in relay.frames(upstream, outcome):
        yield out
    if not relay.ended:
        return
    if not outcome.usage(stream.usage):
        outcome.note = "engine sent no usage"


async def count_tokens(gateway: Gateway, path: str, headers: Mapping[str, str], raw: bytes,
                       outcome: Outcome) -> Reply:
    """POST /v1/messages/count_tokens: ``{"input_tokens": N}``, counted by the engine."""
    body, info = await admitted(gateway, path, raw, outcome)
    request = translate.count_request(body)
    if can_tokenize(info):
        upstream = await gateway.forward(outcome, headers, "/tokenize",
                                         json.dumps(request).encode())
        key, field = "count", None
    else:
        # the engine's own count of the same prompt, for the price of one generated token
        chat = {"model": body["model"], "messages": request["messages"], "max_tokens": 1}
        if "tools" in request:
            chat["tools"] = request["tools"]
        upstream = await gateway.forward(outcome, headers, CHAT, json.dumps(chat).encode())
        key, field = "usage", "prompt_tokens"
    status, data, out_headers = await buffered(outcome, upstream, gateway.response_headers)
    if status != 200:
        return _upstream_error(outcome, status, data, out_headers)
    parsed = decoded(data)
    value = parsed.get(key) if isinstance(parsed, dict) else None
    if field is not None:
        value = value.get(field) if isinstance(value, dict) else None
    if not isinstance(value, int) or isinstance(value, bool):
        return _json_reply(502, translate.error_body(
            502, "the engine did not say how many tokens the prompt has", outcome.request_id))
    return _json_reply(200, {"input_tokens": value})
