"""Tool calls for the sim: deterministic calls whose arguments validate against the schema.

When a chat or Responses request offers function tools, which are called (pure):

- ``tool_choice`` ``"none"``: none, the answer is text;
- a named function (``{"type": "function", ...}``): that one (400 when it is not offered);
- ``"required"``: the tools the last user message names, else the first tool the
  conversation has not called yet (else the first);
- ``"auto"`` or absent: the tools the last user message names (as words, in the order
  named); none when it names none, or when the last message is a tool result (the model
  reads the results and answers in text, which ends an agent loop).

``parallel_tool_calls: false`` keeps the first call only. The arguments are generated from
the tool's JSON Schema (:func:`example`) with a seed from the prompt: same request, same
calls. They are streamed as vLLM streams tool-call deltas: a delta with the call's index,
id, type, name and empty arguments, then the arguments' JSON in fragments of one sim token
(four characters) each, one per inter-token interval; ``finish_reason`` is ``tool_calls``
(``length`` when ``max_tokens`` cut the arguments short, as a real model's would be).
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .engine import Job
from .protocol import (
    BadRequest,
    ChatFormat,
    ResponsesFormat,
    TextFormat,
    Usage,
    content_text,
    int_param,
    new_id,
)
from .tokens import CHARS_PER_TOKEN, VOCAB, prompt_seed

CHAT_PATH = "/v1/chat/completions"
RESPONSES_PATH = "/v1/responses"
_LIMITS = {CHAT_PATH: ("max_completion_tokens", "max_tokens"),
           RESPONSES_PATH: ("max_output_tokens",)}
_MAX_DEPTH = 8  # nested schemas deeper than this get their required members only


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Tool:
    name: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text
    call_id: str


# -- which tools are called --------------------------------------------------------------

def offered(body: dict[str, Any], responses: bool) -> list[Tool]:
    """The request's function tools (chat nests them under ``function``)."""
    tools: list[Tool] = []
    for tool in body.get("tools") or ():
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            continue
        spec = tool if responses else tool.get("function")
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            params = spec.get("parameters")
            tools.append(Tool(spec["name"], params if isinstance(params, dict) else {}))
    return tools


def last_user_text(body: dict[str, Any], responses: bool) -> str | None:
    """The text of the last message when it is the user's; None otherwise (a tool result)."""
    if responses:
        items = body.get("input")
        if isinstance(items, str):
            return items
        last = items[-1] if isinstance(items, list) and items else None
        if not isinstance(last, dict) or last.get("type", "message") != "message":
            return None
    else:
        messages = body.get("messages")
        last = messages[-1] if isinstance(messages, list) and messages else None
        if not isinstance(last, dict):
            return None
    if last.get("role", "user") != "user":
        return None
    return content_text(last.get("content"))


def named_in(text: str, tools: list[Tool]) -> list[Tool]:
    """The tools ``text`` names as words, in the order it first names them."""
    found = []
    for tool in tools:
        match = re.search(rf"(?<![\w-]){re.escape(tool.name)}(?![\w-])", text)
        if match:
            found.append((match.start(), tool))
    return [tool for _, tool in sorted(found, key=lambda pair: pair[0])]


def called_before(body: dict[str, Any], responses: bool) -> set[str]:
    """The names of the tools the conversation so far already called."""
    names: set[str] = set()
    if responses:
        items = body.get("input")
        for item in items if isinstance(items, list) else ():
            if isinstance(item, dict) and item.get("type") == "function_call":
                names.add(str(item.get("name")))
        return names
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        for call in calls if isinstance(calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                names.add(str(function.get("name")))
    return names


def chosen(body: dict[str, Any], responses: bool) -> list[Tool]:
    """The tools this request calls (see the module's docstring); [] for a text answer."""
    tools = offered(body, responses)
    if not tools:
        return []
    choice = body.get("tool_choice") or "auto"
    text = last_user_text(body, responses)
    if isinstance(choice, dict) and choice.get("type") == "function":
        spec = choice if responses else choice.get("function")
        name = spec.get("name") if isinstance(spec, dict) else None
        picked = [t for t in tools if t.name == name][:1]
        if not picked:
            raise BadRequest(f"tool_choice names the function {name!r}, which is not among "
                             "the request's tools", "tool_choice")
        return picked
    if choice == "none":
        return []
    calls = named_in(text, tools) if text is not None else []
    if choice == "required" and not calls:
        # an agent loop forced to call a tool moves on to the next one it has not called
        # yet (its output tool, typically) instead of calling the first one for ever
        done = called_before(body, responses)
        calls = [t for t in tools if t.name not in done][:1] or tools[:1]
    if body.get("parallel_tool_calls") is False:
        calls = calls[:1]
    return calls


def calls_for(body: dict[str, Any], responses: bool, prompt: str) -> list[ToolCall]:
    """The calls, with arguments generated from each tool's schema (seeded by the prompt)."""
    out = []
    for i, tool in enumerate(chosen(body, responses)):
        rng = random.Random(prompt_seed(f"{i}:{tool.name}:{prompt}"))
        arguments = json.dumps(example(tool.parameters, rng), ensure_ascii=False)
        out.append(ToolCall(tool.name, arguments,
                            new_id("call_" if responses else "chatcmpl-tool-")))
    return out


# -- arguments from a JSON Schema --------------------------------------------------------

_FORMATS = {"date-time": "2026-01-01T12:00:00Z", "date": "2026-01-01", "time": "12:00:00Z",
            "email": "sim@example.com", "uri": "https://example.com/sim",
            "url": "https://example.com/sim", "hostname": "example.com",
            "ipv4": "192.0.2.1", "ipv6": "2001:db8::1",
            "uuid": "00000000-0000-4000-8000-000000000000"}


def example(schema: Any, rng: random.Random, root: Any = None, depth: int = 0) -> Any:
    """A value valid under ``schema`` (types, enum/const, bounds, lengths, required,
    formats, $ref/allOf/anyOf/oneOf); ``pattern`` and ``not`` are not honoured."""
    root = schema if root is None else root
    if not isinstance(schema, dict):
        return "sim"  # true / a bad schema: anything goes
    if isinstance(schema.get("$ref"), str) and depth < 32:
        return example(resolve(schema["$ref"], root), rng, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][rng.randrange(len(schema["enum"]))]
    if isinstance(schema.get("allOf"), list):
        return example(merged(schema, root), rng, root, depth + 1)
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            typed = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return example((typed or options)[0], rng, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if kind is None:
        kind = ("object" if {"properties", "required", "additionalProperties"} & set(schema)
                else "array" if "items" in schema else "string")
    make = _MAKERS.get(kind) if isinstance(kind, str) else None
    return make(schema, rng, root, depth) if make is not None else None


def resolve(ref: str, root: Any) -> Any:
    """A local ``#/...`` JSON pointer into ``root``; {} when it does not resolve."""
    node = root
    if not ref.startswith("#"):
        return {}
    for step in ref[1:].split("/")[1:]:
        step = step.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and step in node:
            node = node[step]
        elif isinstance(node, list) and step.isdigit() and int(step) < len(node):
            node = node[int(step)]
        else:
            return {}
    return node


def merged(schema: dict[str, Any], root: Any) -> dict[str, Any]:
    """``allOf`` folded into one schema: properties and required united, the rest overlaid."""
    out: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    for part in schema["allOf"]:
        part = resolve(part["$ref"], root) if isinstance(part, dict) and "$ref" in part \
            else part
        if not isinstance(part, dict):
            continue
        if "allOf" in part:
            part = merged(part, root)
        for key, value in part.items():
            if key == "properties" and isinstance(value, dict):
                out["properties"] = {**out.get("properties", {}), **value}
            elif key == "required" and isinstance(value, list):
                out["required"] = list(dict.fromkeys([*out.get("required", []), *value]))
            else:
                out.setdefault(key, value)
    return out


def _count(schema: dict[str, Any], key: str) -> int | None:
    value = schema.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _object(schema: dict[str, Any], rng: random.Random, root: Any, depth: int) -> Any:
    props: dict[str, Any] = schema["properties"] \
        if isinstance(schema.get("properties"), dict) else {}
    required = [r for r in schema.get("required") or () if isinstance(r, str)]
    names = list(props) if depth < _MAX_DEPTH else [n for n in props if n in required]
    out: dict[str, Any] = {name: example(props[name], rng, root, depth + 1) for name in names}
    extra = schema.get("additionalProperties")
    extra_schema = extra if isinstance(extra, dict) else {}
    for name in required:
        if name not in out:
            out[name] = example(extra_schema, rng, root, depth + 1)
    most, least = _count(schema, "maxProperties"), _count(schema, "minProperties")
    while most is not None and len(out) > most:
        optional = [n for n in out if n not in required]
        if not optional:
            break
        out.pop(optional[-1])
    i = 0
    while least is not None and len(out) < least and extra is not False:
        out[f"extra_{i}"] = example(extra_schema, rng, root, depth + 1)
        i += 1
    return out


def _array(schema: dict[str, Any], rng: random.Random, root: Any, depth: int) -> Any:
    prefix: list[Any] = schema["prefixItems"] \
        if isinstance(schema.get("prefixItems"), list) else []
    items = schema.get("items")
    low, high = _count(schema, "minItems") or 0, _count(schema, "maxItems")
    count = max(low, len(prefix), 1 if depth < _MAX_DEPTH else low)
    if high is not None:
        count = min(count, high)
    out: list[Any] = []
    for i in range(count):
        if i < len(prefix):
            out.append(example(prefix[i], rng, root, depth + 1))
            continue
        value = example(items if isinstance(items, dict) else {}, rng, root, depth + 1)
        if schema.get("uniqueItems"):
            for _ in range(16):  # redraw a duplicate (enums, booleans, ...)
                if value not in out:
                    break
                value = example(items if isinstance(items, dict) else {}, rng, root,
                                depth + 1)
        out.append(value)
    return out


def _string(schema: dict[str, Any], rng: random.Random, root: Any, depth: int) -> Any:
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in _FORMATS:
        return _FORMATS[fmt]
    low, high = _count(schema, "minLength") or 0, _count(schema, "maxLength")
    text = VOCAB[rng.randrange(len(VOCAB))].strip()
    while len(text) < low:
        text += VOCAB[rng.randrange(len(VOCAB))]
    return text if high is None else text[:high]


def _bounds(schema: dict[str, Any]) -> tuple[float | None, float | None, bool, bool]:
    """(low, high, low exclusive, high exclusive), drafts 4 and 2020-12 alike."""
    low, high = schema.get("minimum"), schema.get("maximum")
    low_x = high_x = False
    ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if ex_low is True:
        low_x = True
    elif isinstance(ex_low, int | float) and not isinstance(ex_low, bool) and (
            low is None or ex_low >= low):
        low, low_x = ex_low, True
    if ex_high is True:
        high_x = True
    elif isinstance(ex_high, int | float) and not isinstance(ex_high, bool) and (
            high is None or ex_high <= high):
        high, high_x = ex_high, True
    return (low if isinstance(low, int | float) else None,
            high if isinstance(high, int | float) else None, low_x, high_x)


def _int_range(schema: dict[str, Any]) -> tuple[int, int]:
    """The whole numbers the bounds allow, as [lo, hi] (lo > hi: none)."""
    low, high, low_x, high_x = _bounds(schema)
    lo = hi = None
    if low is not None:
        lo = math.ceil(low) + (1 if low_x and math.ceil(low) == low else 0)
    if high is not None:
        hi = math.floor(high) - (1 if high_x and math.floor(high) == high else 0)
    if lo is None and hi is None:
        return 0, 100
    if lo is None:
        assert hi is not None
        return min(0, hi), hi
    return lo, lo + 100 if hi is None else hi


def _integer(schema: dict[str, Any], rng: random.Random, root: Any, depth: int) -> Any:
    lo, hi = _int_range(schema)
    step = schema.get("multipleOf")
    if isinstance(step, int) and not isinstance(step, bool) and step > 0:
        first = -(-lo // step) * step
        return first + step * rng.randrange(max(1, (hi - first) // step + 1))
    return rng.randint(lo, max(lo, hi))


def _number(schema: dict[str, Any], rng: random.Random, root: Any, depth: int) -> Any:
    step = schema.get("multipleOf")
    lo, hi = _int_range(schema)
    if not isinstance(step, float) and lo <= hi:
        return _integer(schema, rng, root, depth)  # a whole number is a number too
    low, high, low_x, high_x = _bounds(schema)
    if isinstance(step, float) and step > 0:
        # a multiple whose quotient is exact in floating point (as validators check it)
        k = math.ceil((low if low is not None else 0.0) / step)
        for i in range(k, k + 1000):
            value = round(i * step, 12)
            if (value / step).is_integer() and _within(value, low, high, low_x, high_x):
                return value
    lo_f = low if low is not None else (high - 1 if high is not None else 0.0)
    hi_f = high if high is not None else lo_f + 1
    return lo_f + (hi_f - lo_f) / 2


def _within(value: float, low: float | None, high: float | None, low_x: bool,
            high_x: bool) -> bool:
    return ((low is None or value > low or (value == low and not low_x))
            and (high is None or value < high or (value == high and not high_x)))


Maker = Callable[[dict[str, Any], random.Random, Any, int], Any]
_MAKERS: dict[str, Maker] = {
    "object": _object, "array": _array, "string": _string, "integer": _integer,
    "number": _number,
    "boolean": lambda schema, rng, root, depth: rng.random() < 0.5,
    "null": lambda schema, rng, root, depth: None,
}


# -- the answer --------------------------------------------------------------------------

def fragments(text: str) -> list[str]:
    """``text`` in pieces of one sim token (four characters) each."""
    return [text[i:i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)] or [""]


class _Calls:
    """The calls' argument fragments laid end to end, as many as the token limit allows."""

    def __init__(self, calls: list[ToolCall], limit: int | None) -> None:
        self.calls = calls
        self.pieces: list[tuple[int, str]] = [
            (k, piece) for k, call in enumerate(calls) for piece in fragments(call.arguments)]
        self.total = len(self.pieces)
        if limit is not None:
            self.pieces = self.pieces[:limit]

    def sent(self) -> list[ToolCall]:
        """The calls as far as their arguments got (the first always: its header is sent)."""
        out = []
        for k, call in enumerate(self.calls):
            text = "".join(p for owner, p in self.pieces if owner == k)
            if k == 0 or text:
                out.append(ToolCall(call.name, text, call.call_id))
        return out

    def opens(self, index: int) -> int | None:
        """The call whose first fragment is ``pieces[index]``, if that is not the first call."""
        owner = self.pieces[index][0]
        if owner and (index == 0 or self.pieces[index - 1][0] != owner):
            return owner
        return None


def _finish_reason(reason: str) -> str:
    return "tool_calls" if reason == "stop" else reason


class ToolChatFormat(ChatFormat):
    """``/v1/chat/completions`` answered with tool calls."""

    def __init__(self, model: str, body: dict[str, Any], calls: _Calls) -> None:
        super().__init__(model, body)
        self.calls = calls

    def _delta(self, k: int, function: dict[str, Any], head: bool) -> bytes:
        call: dict[str, Any] = {"index": k}
        if head:
            call.update(id=self.calls.calls[k].call_id, type="function")
        call["function"] = function
        return b"data: " + _dumps(self.chunk({"tool_calls": [call]}, None)) + b"\n\n"

    def _header(self, k: int) -> bytes:
        return self._delta(k, {"name": self.calls.calls[k].name, "arguments": ""}, True)

    def full(self, text: str, finish_reason: str, usage: Usage) -> dict[str, Any]:
        body = super().full("", _finish_reason(finish_reason), usage)
        message = body["choices"][0]["message"]
        message["content"] = None
        message["tool_calls"] = [
            {"id": c.call_id, "type": "function",
             "function": {"name": c.name, "arguments": c.arguments}}
            for c in self.calls.sent()]
        return body

    def head(self) -> list[bytes]:
        return [*super().head(), self._header(0)]

    def token_frame(self, token: str, index: int) -> bytes:
        owner, piece = self.calls.pieces[index]
        frame = self._delta(owner, {"arguments": piece}, False)
        opened = self.calls.opens(index)
        return frame if opened is None else self._header(opened) + frame

    def tail(self, text: str, finish_reason: str, usage: Usage) -> list[bytes]:
        return super().tail(text, _finish_reason(finish_reason), usage)


class ToolResponsesFormat(ResponsesFormat):
    """``/v1/responses`` answered with ``function_call`` output items."""

    def __init__(self, model: str, body: dict[str, Any], calls: _Calls) -> None:
        super().__init__(model, body)
        self.calls = calls
        self.item_ids = [new_id("fc_") for _ in calls.calls]

    def response(self, status: str, output: list[dict[str, Any]],
                 usage: Usage | None) -> dict[str, Any]:
        out = super().response(status, output, usage)
        out["tools"] = [{"type": "function", "name": t["name"],
                         "description": t.get("description"),
                         "parameters": t.get("parameters"),
                         "strict": t.get("strict") if isinstance(t.get("strict"), bool)
                         else True}
                        for t in self.body.get("tools") or ()
                        if isinstance(t, dict) and t.get("type") == "function"]
        choice = self.body.get("tool_choice")
        if choice is not None:
            out["tool_choice"] = choice
        return out

    def item(self, k: int, arguments: str, status: str) -> dict[str, Any]:
        call = self.calls.calls[k]
        return {"id": self.item_ids[k], "type": "function_call", "status": status,
                "call_id": call.call_id, "name": call.name, "arguments": arguments}

    def full(self, text: str, finish_reason: str, usage: Usage) -> dict[str, Any]:
        output = [self.item(k, c.arguments, "completed")
                  for k, c in enumerate(self.calls.sent())]
        return self.response("completed", output, usage)

    def _added(self, k: int) -> bytes:
        return self._next({"type": "response.output_item.added", "output_index": k,
                           "item": self.item(k, "", "in_progress")})

    def _done(self, k: int) -> bytes:
        arguments = self.calls.sent()[k].arguments
        return (self._next({"type": "response.function_call_arguments.done",
                            "item_id": self.item_ids[k], "output_index": k,
                            "name": self.calls.calls[k].name, "arguments": arguments})
                + self._next({"type": "response.output_item.done", "output_index": k,
                              "item": self.item(k, arguments, "completed")}))

    def head(self) -> list[bytes]:
        return [*self._opening(), self._added(0)]

    def token_frame(self, token: str, index: int) -> bytes:
        owner, piece = self.calls.pieces[index]
        opened = self.calls.opens(index)
        out = b"" if opened is None else self._done(opened - 1) + self._added(opened)
        return out + self._next({"type": "response.function_call_arguments.delta",
                                 "item_id": self.item_ids[owner], "output_index": owner,
                                 "delta": piece})

    def tail(self, text: str, finish_reason: str, usage: Usage) -> list[bytes]:
        last = len(self.calls.sent()) - 1
        return [self._done(last),
                self._next({"type": "response.completed",
                            "response": self.full(text, finish_reason, usage)})]


def answer(path: str, body: dict[str, Any], fmt: TextFormat, job: Job
           ) -> tuple[TextFormat, Job]:
    """The format and job of a request that calls tools; ``fmt`` and ``job`` otherwise.

    The job generates one token per argument fragment (capped by the request's limit);
    its finish reason is ``stop`` (reported as ``tool_calls``) or ``length``.
    """
    if path not in _LIMITS or not body.get("tools"):
        return fmt, job
    responses = path == RESPONSES_PATH
    calls = calls_for(body, responses, job.prompt)
    if not calls:
        return fmt, job
    laid = _Calls(calls, int_param(body, *_LIMITS[path]))
    n = len(laid.pieces)
    reason = "stop" if n == laid.total else "length"
    tool_fmt: TextFormat = (ToolResponsesFormat if responses else ToolChatFormat)(
        fmt.model, body, laid)
    return tool_fmt, Job(job.prompt, job.prompt_tokens, n, reason)
