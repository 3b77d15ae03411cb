"""``/v1/responses``: served by engines that have it, translated for the others.

vLLM and the sim serve Responses natively: the request goes through (with the whole
conversation when it continues a stored one) and only the final event is read,
for usage and the store. Other engines (llama.cpp) get the equivalent chat
completions request, and their answer is translated back (:mod:`responses_translate`).
Finished responses are kept for ``previous_response_id`` unless ``store`` is false.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from nebula_common.asgi import JSON_CONTENT_TYPE
from nebula_common.capabilities import Capability
from nebula_common.http_client import Response
from nebula_common.sse import sse_event

from . import responses_translate as translate
from .auth import AuthError
from .conversations import Conversations, conversation_id, is_conversation_id
from .outcome import Outcome
from .reply import Reply, buffered, error_bytes, stream_reply
from .response_store import Prefetched, StoredResponse
from .sse import ChatStreamRelay, decoded, frame_data, frames_of, sse_blocks
from .state import GatewayState, StateError
from .state.base import encode_items
from .validation import ValidationError

if TYPE_CHECKING:
    from .gateway import Gateway

NATIVE_RESPONSES_ENGINES = frozenset({"vllm", "sim"})
"""Engines with a native /v1/responses, for models whose replicas declared nothing."""
SESSION_HEADER = "x-session-id"
_FINAL_EVENTS = ("response.completed", "response.incomplete")
_COMPLETED, _INCOMPLETE = (kind.encode() for kind in _FINAL_EVENTS)


async def handle(gateway: Gateway, path: str, headers: Mapping[str, str], raw: bytes,
                 outcome: Outcome) -> Reply:
    body, info = await gateway.admit(path, raw, outcome)
    store = gateway.state
    prev_id = body.get("previous_response_id")
    previous = None
    if prev_id and store.enabled and not is_conversation_id(prev_id):
        try:  # (any gateway sharing the store has it; a conversation is never a response)
            previous = await store.get_response(prev_id, outcome.owner, time.time())
        except StateError as exc:
            raise state_unavailable(exc) from None
    conv_id = conversation_id(body)
    if conv_id is not None:
        if prev_id:
            raise ValidationError(400, "previous_response_id and conversation cannot be "
                                  "used together", "conversation", "invalid_request")
        _, history = await Conversations(store).load(conv_id, outcome.owner)
        items = [*history, *translate.normalize_input(body["input"])]
        if not headers.get(SESSION_HEADER):
            # every turn on one session key: the router's session affinity keeps a healthy
            # replica (and its prefix cache) for the whole conversation
            headers = {**headers, SESSION_HEADER: conv_id}
    else:
        items = translate.expand_previous(body, Prefetched(store.enabled, prev_id, previous),
                                          outcome.owner)
        headers = chain_session(headers, body, store, prev_id, previous)
    native = info.serves(Capability.RESPONSES, NATIVE_RESPONSES_ENGINES)
    if outcome.span.is_recording():
        outcome.span.set_attribute("nebula.responses.translated", not native)
    if native:
        if body.get("previous_response_id") or conv_id is not None:
            # a replica may not have the previous turn: send the whole conversation
            forwarded = {**body, "input": items}
            forwarded.pop("previous_response_id", None)
            forwarded.pop("conversation", None)
            raw = json.dumps(forwarded).encode()
        upstream = await gateway.forward(outcome, headers, path, raw)
    else:
        chat = translate.responses_to_chat(body, items)
        upstream = await gateway.forward(outcome, headers, "/v1/chat/completions",
                                         json.dumps(chat).encode())
    if body.get("stream") is True and upstream.status == 200 and \
            upstream.content_type == "text/event-stream":
        frames = (native_frames if native else translated_frames)(
            outcome, upstream, body, items, store, headers.get(SESSION_HEADER, ""))
        return stream_reply(upstream, frames, gateway.response_headers)
    status, data, out_headers = await buffered(outcome, upstream, gateway.response_headers)
    if status != 200:
        return Reply(status, out_headers, data)
    try:
        parsed = json.loads(data)
    except ValueError:
        return Reply(502, [JSON_CONTENT_TYPE], error_bytes(
            502, "the engine answered with invalid JSON", code="upstream_error"))
    if native:
        response = parsed
        if body.get("previous_response_id") and isinstance(response, dict):
            response["previous_response_id"] = body["previous_response_id"]
            data = json.dumps(response).encode()
        if conv_id is not None and isinstance(response, dict):
            response["conversation"] = {"id": conv_id}
            data = json.dumps(response).encode()
    else:
        response = translate.chat_to_response(parsed, body)
        data = json.dumps(response).encode()
    if isinstance(response, dict):
        outcome.usage(response.get("usage"))
        await remember(store, outcome, body, items, response, data,
                       headers.get(SESSION_HEADER, ""))
    return Reply(200, [h for h in out_headers if h[0] != b"content-type"]
                 + [JSON_CONTENT_TYPE], data)


def chain_session(headers: Mapping[str, str], body: dict[str, Any], store: GatewayState,
                  prev_id: Any, previous: StoredResponse | None) -> Mapping[str, str]:
    """The headers with the session key of this turn's chain of responses.

    Every turn of a ``previous_response_id`` chain goes to the router on one session key
    (kept with each stored response), so its session affinity sends the chain to one
    healthy replica and its prefix cache: the first turn's key (the caller's
    ``x-session-id``, else one made here for a response that will be stored), or the
    previous response's id for a chain stored without one. A caller's own header wins."""
    if headers.get(SESSION_HEADER):
        return headers
    if previous is not None:
        session = previous.session or str(prev_id)
    elif not prev_id and store.enabled and body.get("store") is not False:
        session = f"chain_{uuid.uuid4().hex}"
    else:
        return headers
    return {**headers, SESSION_HEADER: session}


def state_unavailable(exc: StateError) -> AuthError:
    return AuthError(503, "the gateway cannot reach its state store to read the previous "
                     "response; retry shortly", "state_unavailable", "server_error",
                     retry_after=1)


async def remember(store: GatewayState, outcome: Outcome, body: dict[str, Any],
                   items: list[dict[str, Any]], response: dict[str, Any],
                   encoded: bytes | None = None, session: str = "") -> None:
    """Keep a finished response (``encoded``: as sent) for its key, unless the request
    said not to; only what reached the engine of its input is kept. Kept before the
    client gets the end of it: its next turn may come at once, to another gateway.
    A turn of a conversation is appended to it (whatever ``store`` says). ``session``:
    the session key it was routed on (its follow-ups' affinity)."""
    conv_id = conversation_id(body)
    if conv_id is not None:
        try:
            await Conversations(store).append_turn(
                conv_id, outcome.owner, translate.normalize_input(body["input"]), response)
        except (ValidationError, AuthError) as exc:
            outcome.note = f"conversation not updated: {exc}"
    if body.get("store") is False or not isinstance(response.get("id"), str):
        return
    data = encoded if encoded is not None else json.dumps(response).encode()
    try:
        kept = await store.put_response(response["id"], outcome.owner, data,
                                        encode_items(translate.kept_items(items)),
                                        time.time(), session)
    except StateError:
        outcome.note = "response not stored: state store unreachable"
        return
    if not kept and store.enabled:
        outcome.note = "response not stored: over --response-entry-bytes"


async def native_frames(outcome: Outcome, upstream: Response,
                        body: dict[str, Any], items: list[dict[str, Any]],
                        store: GatewayState, session: str = "") -> AsyncIterator[bytes]:
    """Native Responses SSE: bytes through; the final event is read for store + usage."""
    async for block in sse_blocks(upstream.iter_any()):
        if _COMPLETED in block or _INCOMPLETE in block:
            for frame in frames_of(block):
                data = frame_data(frame)
                if not data or (_COMPLETED not in data and _INCOMPLETE not in data):
                    continue
                event = decoded(data)
                response = event.get("response") if isinstance(event, dict) else None
                if isinstance(response, dict) and event.get("type") in _FINAL_EVENTS:
                    outcome.usage(response.get("usage"))
                    await remember(store, outcome, body, items, response, session=session)
        yield block


async def translated_frames(outcome: Outcome, upstream: Response,
                            body: dict[str, Any], items: list[dict[str, Any]],
                            store: GatewayState, session: str = "") -> AsyncIterator[bytes]:
    """Chat completion chunks in, the Responses event sequence out."""
    translator = translate.StreamTranslator(body)
    relay = ChatStreamRelay(translator, sse_event)
    async for out in relay.frames(upstream, outcome):
        yield out
    if not relay.ended:
        return
    response = translator.response
    if not outcome.usage(response.get("usage")):
        outcome.note = "engine sent no usage"
    await remember(store, outcome, body, items, response, session=session)
