"""The Responses API over chat completions: pure translation, no IO.

Engines without a native ``/v1/responses`` (llama.cpp) get a chat completions
request instead; their answer (or their stream of chunks) is turned back into
a Response object (or the full Responses event sequence). Usage always comes
from the engine, never estimated.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .response_store import Lookup
from .validation import ValidationError


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# -- conversation state (store / previous_response_id) -----------------------------------

def normalize_input(value: Any) -> list[dict[str, Any]]:
    """``input`` as a list of items (a string is one user message)."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return [dict(item) for item in value]


def output_as_input(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Output items fed back as input items of the next turn."""
    items: list[dict[str, Any]] = []
    for item in output:
        if item.get("type") == "message":
            parts = item.get("content")
            items.append({"type": "message", "role": "assistant",
                          "content": [{"type": "output_text", "text": p.get("text", "")}
                                      for p in parts if isinstance(p, dict)
                                      and p.get("type") == "output_text"]
                          if isinstance(parts, list) else []})
        elif item.get("type") == "function_call":
            items.append({"type": "function_call", "call_id": item.get("call_id", ""),
                          "name": item.get("name", ""), "arguments": item.get("arguments", "")})
    return items


def expand_previous(body: dict[str, Any], store: Lookup,
                    owner: str) -> list[dict[str, Any]]:
    """The full input of this turn: the stored conversation, then this request's input.

    Raises a 400 when ``previous_response_id`` is unknown to ``owner`` (never silently
    ignored; another key's response is unknown too).
    """
    current = normalize_input(body["input"])
    prev_id = body.get("previous_response_id")
    if not prev_id:
        return current
    if not store.enabled:
        raise ValidationError(400, "previous_response_id is not supported: this gateway "
                              "stores no responses (--store-responses 0)",
                              "previous_response_id", "unsupported_parameter")
    stored = store.get(prev_id, owner)
    if stored is None:
        raise ValidationError(400, f"previous response {prev_id!r} not found (it was never "
                              "stored, store was false, it was too large to keep, or it has "
                              "expired)", "previous_response_id", "previous_response_not_found")
    return [*stored.input_items(), *output_as_input(stored.output()), *current]


_ITEM_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}
_TEXT_PARTS = ("input_text", "output_text", "text")


def _kept_part(part: dict[str, Any]) -> dict[str, Any] | None:
    kind = part.get("type")
    if kind in _TEXT_PARTS:
        return {"type": kind, "text": part.get("text", "")}
    if kind == "input_image" and part.get("image_url"):
        return {"type": kind, "image_url": part["image_url"]}
    if kind == "refusal":
        return {"type": kind, "refusal": part.get("refusal", "")}
    return None


def _kept_content(content: Any) -> Any:
    if not isinstance(content, list):
        return content
    return [kept for part in content if (kept := _kept_part(part)) is not None]


def kept_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the store keeps of a turn's input: what reaches an engine, nothing else.

    The members each item type is translated from (:func:`input_to_messages`) and the
    client's own item id; other members, reasoning items and item references, which
    carry nothing an engine is sent, are dropped.
    """
    kept: list[dict[str, Any]] = []
    for item in items:
        kind = item.get("type", "message")
        if kind not in _ITEM_PREFIX:
            continue
        out: dict[str, Any] = {"type": kind}
        if isinstance(item.get("id"), str):
            out["id"] = item["id"]
        if kind == "message":
            out["role"] = item.get("role", "user")
            out["content"] = _kept_content(item.get("content"))
        elif kind == "function_call":
            for name in ("call_id", "name", "arguments"):
                out[name] = item.get(name, "")
        else:
            out["call_id"] = item.get("call_id", "")
            out["output"] = _kept_content(item.get("output"))
        kept.append(out)
    return kept


def listed_item(item: dict[str, Any], fallback_id: str) -> dict[str, Any]:
    """A stored input item as ``input_items`` lists it: with an id, content as parts."""
    out = {"id": fallback_id, **item, "status": "completed"}
    if item.get("type") != "message":
        return out
    assistant = item.get("role") == "assistant"
    content = item.get("content")
    if isinstance(content, str):
        content = [{"type": "output_text" if assistant else "input_text", "text": content}]
    if assistant:
        content = [{**p, "annotations": p.get("annotations", [])} for p in content or []]
    out["content"] = content
    return out


def items_page(response_id: str, items: list[dict[str, Any]], *, limit: int, order: str,
               after: str | None) -> dict[str, Any]:
    """One page of ``GET /v1/responses/{id}/input_items`` (a cursor list, as OpenAI's).

    An item the client gave no id gets one from its response and position, the same on
    every call (``after`` pages by it).
    """
    suffix = response_id.partition("_")[2] or response_id
    listed = [listed_item(item, f"{_ITEM_PREFIX[item['type']]}_{suffix}_{i}")
              for i, item in enumerate(items)]
    if order != "asc":
        listed.reverse()
    if after is not None:
        ids = [item["id"] for item in listed]
        listed = listed[ids.index(after) + 1:] if after in ids else []
    page = listed[:limit]
    return {"object": "list", "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(listed) > limit}


# -- request: Responses -> chat completions ----------------------------------------------

def _text_of(content: Any) -> str | list[dict[str, Any]]:
    """Responses content parts as chat content: a string when it is all text."""
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content or []:
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": part.get("text", "")})
        elif kind == "input_image":
            url = part.get("image_url") or ""
            parts.append({"type": "image_url", "image_url": {"url": url}})
        elif kind == "refusal":
            parts.append({"type": "text", "text": part.get("refusal", "")})
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def input_to_messages(items: list[dict[str, Any]],
                      instructions: str | None) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role", "user")
            if role == "developer":
                role = "system"  # llama.cpp's chat templates know system, not developer
            messages.append({"role": role, "content": _text_of(item.get("content"))})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item.get("arguments", "")}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append({"role": "tool", "tool_call_id": item["call_id"],
                             "content": output if isinstance(output, str)
                             else _text_of(output)})
        # reasoning and item_reference items carry nothing a chat engine can use
    return messages


def _tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise ValidationError(400, f"tool type {tool.get('type')!r} is not supported by "
                                  "this model's engine; only function tools are",
                                  f"tools[{i}].type", "unsupported_parameter")
        function = {"name": tool["name"]}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, dict) and choice.get("type") == "function" and "name" in choice:
        return {"type": "function", "function": {"name": choice["name"]}}
    return choice


def _response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    fmt = (text or {}).get("format")
    if not fmt or fmt.get("type") == "text":
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    schema = {"name": fmt.get("name") or "response", "schema": fmt.get("schema", {})}
    if fmt.get("strict") is not None:
        schema["strict"] = fmt["strict"]
    if fmt.get("description"):
        schema["description"] = fmt["description"]
    return {"type": "json_schema", "json_schema": schema}


def responses_to_chat(body: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat completions request equivalent to a Responses request.

    ``items`` is the full input of this turn (see :func:`expand_previous`).
    """
    chat: dict[str, Any] = {"model": body["model"],
                            "messages": input_to_messages(items, body.get("instructions"))}
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    for key in ("temperature", "top_p", "parallel_tool_calls", "user"):
        if body.get(key) is not None:
            chat[key] = body[key]
    tools = _tools(body.get("tools"))
    if tools:
        chat["tools"] = tools
    if body.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    response_format = _response_format(body.get("text"))
    if response_format:
        chat["response_format"] = response_format
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


# -- response: chat completion -> Response -----------------------------------------------

def map_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chat ``usage`` (engine counted) as Responses ``usage``."""
    if not usage:
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    cached = int(((usage.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0)
    reasoning = int(((usage.get("completion_tokens_details") or {})
                     .get("reasoning_tokens")) or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }


def base_response(body: dict[str, Any], response_id: str, created_at: int,
                  status: str = "in_progress") -> dict[str, Any]:
    """A Response object echoing the request's settings, with empty output."""
    text = body.get("text") or {"format": {"type": "text"}}
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body["model"],
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": text,
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "metadata": body.get("metadata") or {},
    }


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status,
            "content": [{"type": "output_text", "text": text, "annotations": [],
                         "logprobs": []}]}


def _finish(response: dict[str, Any], finish_reason: str | None) -> None:
    if finish_reason == "length":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    elif finish_reason == "content_filter":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "content_filter"}
    else:
        response["status"] = "completed"
        response["completed_at"] = int(time.time())


def chat_to_response(chat: dict[str, Any], body: dict[str, Any],
                     response_id: str | None = None) -> dict[str, Any]:
    """A Response object from a (non-streamed) chat completion."""
    response = base_response(body, response_id or new_id("resp"),
                             int(chat.get("created") or time.time()))
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content = message.get("content")
    if content:
        response["output"].append(_message_item(new_id("msg"), content, "completed"))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        response["output"].append({
            "id": new_id("fc"), "type": "function_call", "status": "completed",
            "call_id": call.get("id") or new_id("call"),
            "name": function.get("name", ""), "arguments": function.get("arguments") or "",
        })
    if not response["output"]:
        response["output"].append(_message_item(new_id("msg"), "", "completed"))
    usage = map_usage(chat.get("usage"))
    if usage is not None:  # the schema has no null usage: absent means the engine sent none
        response["usage"] = usage
    _finish(response, choice.get("finish_reason"))
    return response


# -- streaming: chat chunks -> Responses events ------------------------------------------

@dataclass
class _OpenItem:
    index: int
    item: dict[str, Any]
    text: list[str] = field(default_factory=list)


class StreamTranslator:
    """State machine: chat completion chunks in, Responses stream events out.

    Call :meth:`start` once, :meth:`feed` for every decoded chunk, then
    :meth:`finish` at ``[DONE]`` (or :meth:`fail` on an upstream error event).
    """

    def __init__(self, body: dict[str, Any], response_id: str | None = None):
        self.response = base_response(body, response_id or new_id("resp"), int(time.time()))
        self.seq = 0
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self._message: _OpenItem | None = None
        self._calls: dict[int, _OpenItem] = {}
        self._done = False

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return event

    def _snapshot(self) -> dict[str, Any]:
        copy: dict[str, Any] = json.loads(json.dumps(self.response))
        return copy

    def start(self) -> list[dict[str, Any]]:
        return [self._event("response.created", response=self._snapshot()),
                self._event("response.in_progress", response=self._snapshot())]

    def _next_index(self) -> int:
        return len(self.response["output"])

    def _open_message(self) -> list[dict[str, Any]]:
        index = self._next_index()
        item = {"id": new_id("msg"), "type": "message", "role": "assistant",
                "status": "in_progress", "content": []}
        self.response["output"].append(item)
        self._message = _OpenItem(index, item)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [self._event("response.output_item.added", output_index=index,
                            item=json.loads(json.dumps(item))),
                self._event("response.content_part.added", item_id=item["id"],
                            output_index=index, content_index=0, part=part)]

    def _close_message(self) -> list[dict[str, Any]]:
        open_item, self._message = self._message, None
        if open_item is None:
            return []
        text = "".join(open_item.text)
        item = open_item.item
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        item["content"] = [part]
        item["status"] = "completed"
        return [self._event("response.output_text.done", item_id=item["id"],
                            output_index=open_item.index, content_index=0, text=text,
                            logprobs=[]),
                self._event("response.content_part.done", item_id=item["id"],
                            output_index=open_item.index, content_index=0, part=part),
                self._event("response.output_item.done", output_index=open_item.index,
                            item=json.loads(json.dumps(item)))]

    def _close_calls(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for open_item in self._calls.values():
            item = open_item.item
            item["arguments"] = "".join(open_item.text)
            item["status"] = "completed"
            events.append(self._event("response.function_call_arguments.done",
                                      item_id=item["id"], output_index=open_item.index,
                                      name=item["name"], arguments=item["arguments"]))
            events.append(self._event("response.output_item.done",
                                      output_index=open_item.index,
                                      item=json.loads(json.dumps(item))))
        self._calls.clear()
        return events

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                if self._message is None:
                    events += self._open_message()
                assert self._message is not None
                self._message.text.append(content)
                events.append(self._event("response.output_text.delta",
                                          item_id=self._message.item["id"],
                                          output_index=self._message.index, content_index=0,
                                          delta=content, logprobs=[]))
            for call in delta.get("tool_calls") or []:
                events += self._feed_call(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def _feed_call(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        key = int(call.get("index", 0))
        function = call.get("function") or {}
        open_item = self._calls.get(key)
        if open_item is None:
            events += self._close_message()
            index = self._next_index()
            item = {"id": new_id("fc"), "type": "function_call", "status": "in_progress",
                    "call_id": call.get("id") or new_id("call"),
                    "name": function.get("name") or "", "arguments": ""}
            self.response["output"].append(item)
            open_item = self._calls[key] = _OpenItem(index, item)
            events.append(self._event("response.output_item.added", output_index=index,
                                      item=json.loads(json.dumps(item))))
        elif function.get("name"):
            open_item.item["name"] += function["name"]
        arguments = function.get("arguments")
        if arguments:
            open_item.text.append(arguments)
            events.append(self._event("response.function_call_arguments.delta",
                                      item_id=open_item.item["id"],
                                      output_index=open_item.index, delta=arguments))
        return events

    def finish(self) -> list[dict[str, Any]]:
        """Close every open item and emit ``response.completed`` with the engine's usage."""
        if self._done:
            return []
        self._done = True
        events = self._close_message() + self._close_calls()
        if not self.response["output"]:
            events = self._open_message() + self._close_message()
        usage = map_usage(self.usage)
        if usage is not None:
            self.response["usage"] = usage
        _finish(self.response, self.finish_reason)
        kind = ("response.completed" if self.response["status"] == "completed"
                else "response.incomplete")
        events.append(self._event(kind, response=self._snapshot()))
        return events

    def fail(self, message: str, code: str | None = None) -> list[dict[str, Any]]:
        """An upstream error mid-stream: an ``error`` event, never a silent end."""
        if self._done:
            return []
        self._done = True
        # ``error`` also carries OpenAI's error object: the SDKs raise on it (as they do
        # for the router's error frame on pass-through streams) instead of ending quietly
        return [self._event("error", code=code, message=message, param=None,
                            error={"message": message, "type": "upstream_error",
                                   "param": None, "code": code})]
