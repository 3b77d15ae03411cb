"""The Anthropic Messages API over chat completions: pure translation, no IO.

Every engine gets the chat completions request equivalent to a Messages request
(:func:`messages_to_chat`); its answer, or its stream of chunks, is turned back
into a Message (:func:`chat_to_message`) or Anthropic's event sequence
(:class:`MessageStream`). Usage always comes from the engine, never estimated.
Errors on these paths are Anthropic's shape (:func:`error_json`).

What is translated and what is not is listed in docs/api.md.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

from .validation import ValidationError

ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
    403: "permission_error", 404: "not_found_error", 408: "timeout_error",
    413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 502: "api_error",
    503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error",
}
"""Anthropic's error ``type`` by HTTP status (its SDK picks the exception by status)."""


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# -- errors ------------------------------------------------------------------------------

def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str, request_id: str | None = None) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message"}}`` (and the request id)."""
    out: dict[str, Any] = {"type": "error",
                           "error": {"type": error_type(status), "message": message}}
    if request_id:
        out["request_id"] = request_id
    return out


def error_json(status: int, message: str, request_id: str | None = None) -> bytes:
    return json.dumps(error_body(status, message, request_id)).encode()


def error_message(data: bytes) -> str:
    """The message of an error body of any shape (OpenAI's, Anthropic's, plain text)."""
    try:
        parsed = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return data.decode("utf-8", "replace").strip()[:500] or "error"
    error = parsed.get("error") if isinstance(parsed, dict) else None
    for value in (error.get("message") if isinstance(error, dict) else None, error,
                  parsed.get("message") if isinstance(parsed, dict) else None):
        if isinstance(value, str) and value:
            return value
    return "error"


def reshaped_error(status: int, data: bytes, request_id: str | None = None) -> bytes:
    """Any error body (an OpenAI one from the gateway, the router or an engine) as
    Anthropic's, with the same message."""
    return error_json(status, error_message(data), request_id)


# -- request: Messages -> chat completions -----------------------------------------------

def _unsupported(message: str, param: str) -> ValidationError:
    return ValidationError(400, message, param, "unsupported_parameter")


def system_text(system: Any) -> str | None:
    """The ``system`` prompt (a string or text blocks) as one string."""
    if isinstance(system, str):
        return system or None
    if isinstance(system, list):
        text = "\n".join(block.get("text", "") for block in system
                         if isinstance(block, dict) and block.get("type") == "text")
        return text or None
    return None


def image_url(source: dict[str, Any]) -> str:
    """An image block's source as the URL a chat engine takes (base64 as a data: URL)."""
    if source.get("type") == "base64":
        return f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    return str(source.get("url", ""))


def _image_part(block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": image_url(block["source"])}}


def _as_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Chat content: a string when every part is text."""
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _tool_result(block: dict[str, Any], param: str
                 ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A ``tool_result`` block as a chat tool message, and its images (chat tool
    messages carry text only: the images go in a user message after the results)."""
    content = block.get("content")
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for k, part in enumerate(content):
            kind = part.get("type")
            if kind == "text":
                texts.append(part.get("text", ""))
            elif kind == "image":
                images.append(_image_part(part))
            else:
                raise _unsupported(f"tool_result content of type {kind!r} is not supported",
                                   f"{param}.content[{k}].type")
    return {"role": "tool", "tool_call_id": block["tool_use_id"],
            "content": "\n".join(texts)}, images


def _assistant(content: list[dict[str, Any]], param: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"],
                                       "arguments": json.dumps(block.get("input") or {})}})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # the engine's own reasoning is not fed back to it
        else:
            raise _unsupported(f"assistant content of type {kind!r} is not supported",
                               f"{param}[{j}].type")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    return message


def _user(content: list[dict[str, Any]], param: str) -> list[dict[str, Any]]:
    """A user turn: its tool results as tool messages first, then the rest as one message."""
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            parts.append(_image_part(block))
        elif kind == "tool_result":
            message, images = _tool_result(block, f"{param}[{j}]")
            results.append(message)
            parts.extend(images)
        else:
            raise _unsupported(f"user content of type {kind!r} is not supported",
                               f"{param}[{j}].type")
    if parts or not results:
        results.append({"role": "user", "content": _as_content(parts)})
    return results


def chat_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation (``system`` + ``messages``) as chat messages."""
    out: list[dict[str, Any]] = []
    system = system_text(body.get("system"))
    if system:
        out.append({"role": "system", "content": system})
    for i, message in enumerate(body["messages"]):
        role, content = message["role"], message["content"]
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif role == "assistant":
            out.append(_assistant(content, f"messages[{i}].content"))
        else:
            out.extend(_user(content, f"messages[{i}].content"))
    return out


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Client tools as chat function tools; Anthropic's server tools are refused."""
    out = []
    for i, tool in enumerate(tools or ()):
        if tool.get("type", "custom") != "custom":
            raise _unsupported(f"tool type {tool.get('type')!r} is not supported: only "
                               "client tools (name, input_schema) are", f"tools[{i}].type")
        function: dict[str, Any] = {"name": tool["name"],
                                    "parameters": tool.get("input_schema") or {}}
        if tool.get("description"):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: dict[str, Any]) -> tuple[Any, bool]:
    """(chat ``tool_choice``, parallel calls allowed)."""
    kind = choice.get("type")
    parallel = not choice.get("disable_parallel_tool_use")
    if kind == "any":
        return "required", parallel
    if kind == "tool":
        return {"type": "function", "function": {"name": choice["name"]}}, parallel
    if kind == "none":
        return "none", parallel
    return "auto", parallel


def messages_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The chat completions request equivalent to a Messages request."""
    chat: dict[str, Any] = {"model": body["model"], "messages": chat_messages(body),
                            "max_tokens": body["max_tokens"]}
    if body["messages"][-1]["role"] == "assistant":
        # a prefilled answer: the model continues it (vLLM's way of saying so)
        chat["continue_final_message"] = True
        chat["add_generation_prompt"] = False
    if body.get("stop_sequences"):
        chat["stop"] = body["stop_sequences"]
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            chat[key] = body[key]
    user = (body.get("metadata") or {}).get("user_id")
    if isinstance(user, str) and user:
        chat["user"] = user
    fmt = (body.get("output_config") or {}).get("format")
    if fmt:  # structured output: JSON under the schema
        chat["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "output", "schema": fmt["schema"]}}
    tools = chat_tools(body.get("tools"))
    if tools:
        chat["tools"] = tools
        if body.get("tool_choice"):
            chat["tool_choice"], parallel = chat_tool_choice(body["tool_choice"])
            if not parallel:
                chat["parallel_tool_calls"] = False
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def count_request(body: dict[str, Any]) -> dict[str, Any]:
    """What an engine's ``/tokenize`` counts for a count_tokens request: the chat
    messages (and tools) with the generation prompt, as a Messages request would be sent."""
    out: dict[str, Any] = {"model": body["model"], "messages": chat_messages(body),
                           "add_generation_prompt": True}
    tools = chat_tools(body.get("tools"))
    if tools:
        out["tools"] = tools
    return out


def media_urls(body: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Every image URL a client gave (``source.type: url``), with its param."""
    for i, message in enumerate(body.get("messages") or ()):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for j, block in enumerate(content):
            param = f"messages[{i}].content[{j}]"
            blocks = [(param, block)]
            if block.get("type") == "tool_result" and isinstance(block.get("content"), list):
                blocks += [(f"{param}.content[{k}]", part)
                           for k, part in enumerate(block["content"])]
            for where, part in blocks:
                source = part.get("source") if part.get("type") == "image" else None
                if isinstance(source, dict) and source.get("type") == "url":
                    yield f"{where}.source.url", str(source.get("url", ""))


# -- answer: chat completion -> Message --------------------------------------------------

def stop_reason(finish_reason: Any, matched: Any, stop_sequences: Any,
                called: bool) -> tuple[str, str | None]:
    """(Anthropic ``stop_reason``, ``stop_sequence``) of a chat finish reason.

    ``matched`` is vLLM's ``stop_reason`` (the stop string that ended the text).
    """
    if finish_reason == "length":
        return "max_tokens", None
    if finish_reason in ("tool_calls", "function_call") or called:
        return "tool_use", None
    if finish_reason == "content_filter":
        return "refusal", None
    if isinstance(matched, str) and isinstance(stop_sequences, list) and \
            matched in stop_sequences:
        return "stop_sequence", matched
    return "end_turn", None


def tool_input(arguments: Any) -> dict[str, Any]:
    """A call's arguments (JSON text) as a tool_use ``input`` object ({} when not one)."""
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments or "{}")
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def message_usage(usage: Any) -> dict[str, int]:
    """Chat usage (engine counted) as Anthropic's."""
    usage = usage if isinstance(usage, dict) else {}
    return {"input_tokens": int(usage.get("prompt_tokens") or 0),
            "output_tokens": int(usage.get("completion_tokens") or 0)}


def base_message(model: str, message_id: str) -> dict[str, Any]:
    return {"id": message_id, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0}}


def chat_to_message(chat: dict[str, Any], body: dict[str, Any],
                    message_id: str | None = None) -> dict[str, Any]:
    """A Message from a (non-streamed) chat completion."""
    message = base_message(body["model"], message_id or new_id("msg"))
    choices = chat.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    answer = choice.get("message") or {}
    content: list[dict[str, Any]] = message["content"]
    if answer.get("content"):
        content.append({"type": "text", "text": answer["content"]})
    calls = [c for c in answer.get("tool_calls") or () if isinstance(c, dict)]
    for call in calls:
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or new_id("toolu"),
                        "name": function.get("name", ""),
                        "input": tool_input(function.get("arguments"))})
    message["stop_reason"], message["stop_sequence"] = stop_reason(
        choice.get("finish_reason"), choice.get("stop_reason"), body.get("stop_sequences"),
        bool(calls))
    message["usage"] = message_usage(chat.get("usage"))
    return message


# -- streaming: chat chunks -> Messages events -------------------------------------------

class MessageStream:
    """State machine: chat completion chunks in, Messages stream events out.

    :meth:`start` once (``message_start``), :meth:`feed` each decoded chunk, then
    :meth:`finish` at ``[DONE]`` (the last block's stop, ``message_delta`` with the stop
    reason and the engine's usage, ``message_stop``), or :meth:`fail` on an error.
    """

    def __init__(self, body: dict[str, Any], message_id: str | None = None) -> None:
        self.body = body
        self.message = base_message(body["model"], message_id or new_id("msg"))
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.matched: Any = None
        self.blocks = 0  # content blocks started
        self.open: int | None = None  # the index of the block still open
        self.tools: dict[int, int] = {}  # a chat tool call's index -> its block's index
        self.done = False

    def start(self) -> list[dict[str, Any]]:
        return [{"type": "message_start", "message": json.loads(json.dumps(self.message))}]

    def _close(self) -> list[dict[str, Any]]:
        if self.open is None:
            return []
        index, self.open = self.open, None
        return [{"type": "content_block_stop", "index": index}]

    def _begin(self, block: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._close()
        self.open = self.blocks
        self.blocks += 1
        events.append({"type": "content_block_start", "index": self.open,
                       "content_block": block})
        return events

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                if self.open is None or self.open in self.tools.values():
                    events += self._begin({"type": "text", "text": ""})
                assert self.open is not None
                events.append({"type": "content_block_delta", "index": self.open,
                               "delta": {"type": "text_delta", "text": text}})
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    events += self._feed_call(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
                self.matched = choice.get("stop_reason")
        return events

    def _feed_call(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        key = int(call.get("index", 0))
        function = call.get("function") or {}
        index = self.tools.get(key)
        if index is None:
            events += self._begin({"type": "tool_use", "id": call.get("id") or new_id("toolu"),
                                   "name": function.get("name") or "", "input": {}})
            assert self.open is not None
            index = self.tools[key] = self.open
        arguments = function.get("arguments")
        if arguments:
            events.append({"type": "content_block_delta", "index": index,
                           "delta": {"type": "input_json_delta", "partial_json": arguments}})
        return events

    def finish(self) -> list[dict[str, Any]]:
        if self.done:
            return []
        self.done = True
        events = self._close()
        reason, sequence = stop_reason(self.finish_reason, self.matched,
                                       self.body.get("stop_sequences"), bool(self.tools))
        events.append({"type": "message_delta",
                       "delta": {"stop_reason": reason, "stop_sequence": sequence},
                       "usage": message_usage(self.usage)})
        events.append({"type": "message_stop"})
        return events

    def fail(self, message: str, code: str | None = None, status: int = 502
             ) -> list[dict[str, Any]]:
        """An error mid-stream: Anthropic's ``error`` event, never a silent end (Anthropic's
        error types follow the status; an engine's ``code`` has no place there)."""
        if self.done:
            return []
        self.done = True
        return [{"type": "error", "error": {"type": error_type(status), "message": message}}]
