"""OpenAI wire shapes for the sim: prompt flattening and response/stream builders.

Pure functions and small classes, no IO. Streams are built from pre-encoded
byte templates so a token costs one small ``bytes`` join, not a JSON dump.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import random
import struct
import time
from dataclasses import dataclass
from typing import Any

from nebula_common.openai_errors import error_json

DONE_FRAME = b"data: [DONE]\n\n"


class Refusal(Exception):
    """A request answered with an OpenAI error instead of being run (status, code, param)."""

    def __init__(self, status: int, message: str, *, code: str | None = None,
                 param: str | None = None, type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param
        self.type = type  # None: the OpenAI type of the status

    def body(self) -> bytes:
        """The OpenAI error body (``{"error": {...}}``)."""
        return error_json(self.status, str(self), code=self.code, param=self.param,
                          type=self.type)


class BadRequest(Refusal, ValueError):
    """A request the OpenAI API would answer with 400 (message, offending param)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(400, message, param=param)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def new_id(prefix: str) -> str:
    return f"{prefix}{os.urandom(12).hex()}"


# -- prompt flattening -------------------------------------------------------------------
def content_text(content: Any) -> str:
    """Text of an OpenAI message ``content``: a string or a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    out.append(text)
        return "".join(out)
    raise BadRequest("message content must be a string or a list of parts", "content")


def chat_prompt(body: dict[str, Any]) -> str:
    """Flatten chat ``messages`` into one prompt string (what the prefix cache sees)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", "messages")
    parts = []
    for msg in messages:
        if not isinstance(msg, dict):
            raise BadRequest("each message must be an object", "messages")
        parts.append(f"{msg.get('role', 'user')}: {content_text(msg.get('content'))}\n")
    return "".join(parts)


def completion_prompt(body: dict[str, Any]) -> str:
    """Flatten a completions ``prompt``: str, list of str, token list or list of those."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return "\n".join(prompt)
        if all(isinstance(p, int) for p in prompt):
            return " ".join(map(str, prompt))
        if all(isinstance(p, list) for p in prompt):
            return "\n".join(" ".join(map(str, p)) for p in prompt)
    raise BadRequest("'prompt' must be a string, a list of strings or token ids", "prompt")


def responses_prompt(body: dict[str, Any]) -> str:
    """Flatten Responses ``instructions`` + ``input`` (a string or a list of items)."""
    parts = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        parts.append(f"system: {instructions}\n")
    inp = body.get("input")
    if isinstance(inp, str):
        parts.append(f"user: {inp}\n")
    elif isinstance(inp, list) and inp:
        for item in inp:
            if not isinstance(item, dict):
                raise BadRequest("each input item must be an object", "input")
            if "content" in item:
                parts.append(f"{item.get('role', 'user')}: {content_text(item['content'])}\n")
            elif "output" in item:  # function_call_output and the like
                parts.append(f"tool: {item['output']}\n")
    else:
        raise BadRequest("'input' must be a string or a non-empty list", "input")
    return "".join(parts)


def embedding_inputs(body: dict[str, Any]) -> list[str]:
    """Embeddings ``input``: str, list of str, token list or list of token lists."""
    inp = body.get("input")
    if isinstance(inp, str):
        return [inp]
    if isinstance(inp, list) and inp:
        if all(isinstance(p, str) for p in inp):
            return list(inp)
        if all(isinstance(p, int) for p in inp):
            return [" ".join(map(str, inp))]
        if all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in inp):
            return [" ".join(map(str, p)) for p in inp]
    raise BadRequest("'input' must be a string, a list of strings or token ids", "input")


def int_param(body: dict[str, Any], *names: str) -> int | None:
    """The first of ``names`` present in ``body`` as a positive int (400 otherwise)."""
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadRequest(f"'{name}' must be a positive integer", name)
        return value
    return None


# -- usage ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def openai(self) -> dict[str, Any]:
        """Chat/completions usage."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }

    def responses(self) -> dict[str, Any]:
        """Responses API usage."""
        return {
            "input_tokens": self.prompt_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens,
                                     "cache_write_tokens": 0},
            "output_tokens": self.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.total_tokens,
        }


# -- text formats -------------------------------------------------------------------------
class TextFormat:
    """One endpoint's shapes: a full body, and stream frames head / per token / tail."""

    def __init__(self, model: str, body: dict[str, Any]) -> None:
        self.model = model
        self.created = int(time.time())
        self.include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def full(self, text: str, finish_reason: str, usage: Usage) -> dict[str, Any]:
        raise NotImplementedError

    def head(self) -> list[bytes]:
        """Frames sent with the first token."""
        return []

    def token_frame(self, token: str, index: int) -> bytes:
        raise NotImplementedError

    def tail(self, text: str, finish_reason: str, usage: Usage) -> list[bytes]:
        """Frames after the last token (finish, usage, end marker)."""
        raise NotImplementedError

    def all_frames(self, tokens: list[str], finish_reason: str, usage: Usage) -> list[bytes]:
        """The whole stream at once (no pacing between tokens)."""
        frames = self.head()
        frames.extend(self.token_frame(t, i) for i, t in enumerate(tokens))
        frames.extend(self.tail("".join(tokens), finish_reason, usage))
        return frames


def _template(obj: dict[str, Any], marker: str) -> tuple[bytes, bytes]:
    """Split the encoding of ``obj`` around the string value ``marker``."""
    encoded = b"data: " + _dumps(obj) + b"\n\n"
    quoted = _dumps(marker)
    before, _, after = encoded.partition(quoted)
    return before, after


_TOKEN_MARKER = "\x00TOKEN\x00"
_TOKEN_JSON: dict[str, bytes] = {}


def token_json(token: str) -> bytes:
    """JSON string of a token, memoised (the vocabulary is small)."""
    encoded = _TOKEN_JSON.get(token)
    if encoded is None:
        encoded = _dumps(token)
        if len(_TOKEN_JSON) < 4096:
            _TOKEN_JSON[token] = encoded
    return encoded


class ChatFormat(TextFormat):
    """``/v1/chat/completions``."""

    def __init__(self, model: str, body: dict[str, Any]) -> None:
        super().__init__(model, body)
        self.id = new_id("chatcmpl-")
        self._before, self._after = _template(
            self.chunk({"content": _TOKEN_MARKER}, None), _TOKEN_MARKER)

    def chunk(self, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [{"index": 0, "delta": delta,
                                                  "logprobs": None,
                                                  "finish_reason": finish_reason}]}

    def full(self, text: str, finish_reason: str, usage: Usage) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text,
                                                     "refusal": None},
                             "logprobs": None, "finish_reason": finish_reason}],
                "usage": usage.openai()}

    def head(self) -> list[bytes]:
        return [b"data: " + _dumps(self.chunk({"role": "assistant", "content": ""}, None))
                + b"\n\n"]

    def token_frame(self, token: str, index: int) -> bytes:
        return self._before + token_json(token) + self._after

    def tail(self, text: str, finish_reason: str, usage: Usage) -> list[bytes]:
        frames = [b"data: " + _dumps(self.chunk({}, finish_reason)) + b"\n\n"]
        if self.include_usage:
            frames.append(b"data: " + _dumps({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [], "usage": usage.openai()}) + b"\n\n")
        frames.append(DONE_FRAME)
        return frames


class CompletionFormat(TextFormat):
    """``/v1/completions`` (stream chunks share the non-stream shape)."""

    def __init__(self, model: str, body: dict[str, Any]) -> None:
        super().__init__(model, body)
        self.id = new_id("cmpl-")
        self._before, self._after = _template(self.chunk(_TOKEN_MARKER, None), _TOKEN_MARKER)

    def chunk(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model, "choices": [{"index": 0, "text": text, "logprobs": None,
                                                  "finish_reason": finish_reason}]}

    def full(self, text: str, finish_reason: str, usage: Usage) -> dict[str, Any]:
        body = self.chunk(text, finish_reason)
        body["usage"] = usage.openai()
        return body

    def token_frame(self, token: str, index: int) -> bytes:
        return self._before + token_json(token) + self._after

    def tail(self, text: str, finish_reason: str, usage: Usage) -> list[bytes]:
        frames = [b"data: " + _dumps(self.chunk("", finish_reason)) + b"\n\n"]
        if self.include_usage:
            frames.append(b"data: " + _dumps({
                "id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model, "choices": [], "usage": usage.openai()}) + b"\n\n")
        frames.append(DONE_FRAME)
        return frames


def _event(obj: dict[str, Any]) -> bytes:
    kind: str = obj["type"]
    return b"event: " + kind.encode() + b"\ndata: " + _dumps(obj) + b"\n\n"


class ResponsesFormat(TextFormat):
    """``/v1/responses``: the Response object and its streaming event sequence."""

    def __init__(self, model: str, body: dict[str, Any]) -> None:
        super().__init__(model, body)
        self.id = new_id("resp_")
        self.item_id = new_id("msg_")
        self.body = body
        self.seq = 0
        delta = {"type": "response.output_text.delta", "item_id": self.item_id,
                 "output_index": 0, "content_index": 0, "delta": _TOKEN_MARKER,
                 "logprobs": []}
        encoded = b"event: response.output_text.delta\ndata: " + _dumps(delta)
        before, _, after = encoded.partition(_dumps(_TOKEN_MARKER))
        # The JSON ends with "}"; the sequence number goes in just before it.
        self._before, self._after = before, after[:-1] + b',"sequence_number":'

    def response(self, status: str, output: list[dict[str, Any]],
                 usage: Usage | None) -> dict[str, Any]:
        body = self.body
        metadata = body.get("metadata")
        out = {
            "id": self.id, "object": "response", "created_at": self.created,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": None, "incomplete_details": None,
            "instructions": body.get("instructions") if isinstance(
                body.get("instructions"), str) else None,
            "max_output_tokens": body.get("max_output_tokens"),
            "model": self.model, "output": output, "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "store": False, "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [],
            "top_p": body.get("top_p", 1.0), "truncation": "disabled",
            "metadata": metadata if isinstance(metadata, dict) else {},
        }
        if usage is not None:  # the schema has no null usage: leave it out until known
            out["usage"] = usage.responses()
        if isinstance(body.get("user"), str):
            out["user"] = body["user"]
        return out

    def part(self, text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def message(self, text: str | None, status: str) -> dict[str, Any]:
        return {"id": self.item_id, "type": "message", "role": "assistant", "status": status,
                "content": [] if text is None else [self.part(text)]}

    def full(self, text: str, finish_reason: str, usage: Usage) -> dict[str, Any]:
        return self.response("completed", [self.message(text, "completed")], usage)

    def _next(self, obj: dict[str, Any]) -> bytes:
        obj["sequence_number"] = self.seq
        self.seq += 1
        return _event(obj)

    def _opening(self) -> list[bytes]:
        """``response.created`` and ``response.in_progress``: every stream starts so."""
        return [self._next({"type": kind, "response": self.response("in_progress", [], None)})
                for kind in ("response.created", "response.in_progress")]

    def head(self) -> list[bytes]:
        return [
            *self._opening(),
            self._next({"type": "response.output_item.added", "output_index": 0,
                        "item": self.message(None, "in_progress")}),
            self._next({"type": "response.content_part.added", "item_id": self.item_id,
                        "output_index": 0, "content_index": 0, "part": self.part("")}),
        ]

    def token_frame(self, token: str, index: int) -> bytes:
        seq = self.seq
        self.seq += 1
        return self._before + token_json(token) + self._after + str(seq).encode() + b"}\n\n"

    def tail(self, text: str, finish_reason: str, usage: Usage) -> list[bytes]:
        ids = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        return [
            self._next({"type": "response.output_text.done", **ids, "text": text,
                        "logprobs": []}),
            self._next({"type": "response.content_part.done", **ids,
                        "part": self.part(text)}),
            self._next({"type": "response.output_item.done", "output_index": 0,
                        "item": self.message(text, "completed")}),
            self._next({"type": "response.completed",
                        "response": self.full(text, finish_reason, usage)}),
        ]


# -- other shapes -------------------------------------------------------------------------
def models_list(names: list[str], max_model_len: int, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": created, "owned_by": "nebula-sim",
         "root": names[0], "parent": None, "max_model_len": max_model_len}
        for name in names]}


def embedding_vector(text: str, dimensions: int) -> list[float]:
    """A unit vector derived from a hash of ``text``: same text, same vector."""
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
    rng = random.Random(seed)
    vec = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def embeddings_response(model: str, inputs: list[str], dimensions: int, encoding: str,
                        prompt_tokens: int) -> dict[str, Any]:
    data = []
    for i, text in enumerate(inputs):
        vec = embedding_vector(text, dimensions)
        value: Any = vec
        if encoding == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
