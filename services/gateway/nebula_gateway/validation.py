"""Request validation at the edge: pure functions, no IO.

Every public endpoint's body is checked here before anything is forwarded, so
a malformed request costs the cluster nothing and the client gets OpenAI's
error object with ``param`` naming the offending field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

MAX_NESTING = 64
MAX_EMBEDDING_DIMENSIONS = 65536
"""A sanity bound checked at the edge; each engine then enforces its model's own size."""
"""JSON nested deeper than this is refused (hostile bodies, recursion bombs)."""


@dataclass
class ValidationError(Exception):
    """A request the gateway refuses: HTTP status, message, offending param, code."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None

    def __str__(self) -> str:
        return self.message


def _bad(message: str, param: str | None, code: str | None = "invalid_request") -> ValidationError:
    return ValidationError(400, message, param, code)


def _depth_ok(raw: bytes) -> bool:
    """Cheap bracket-depth scan so deeply nested JSON never reaches the parser's recursion."""
    depth = 0
    in_string = False
    escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > MAX_NESTING:
                return False
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return True


def _no_constants(name: str) -> Any:
    """NaN and Infinity are not JSON; Python would accept them and engines choke on them."""
    raise ValueError(f"{name} is not valid JSON")


def parse_body(raw: bytes, max_bytes: int) -> dict[str, Any]:
    """Decode a JSON object body or raise :class:`ValidationError` (400/413)."""
    if len(raw) > max_bytes:
        raise ValidationError(413, f"request body is {len(raw)} bytes; the limit is {max_bytes}",
                              None, "request_too_large")
    if not raw.strip():
        raise _bad("request body is empty; expected a JSON object", None, "invalid_json")
    if raw.count(b"[") + raw.count(b"{") > MAX_NESTING and not _depth_ok(raw):
        raise _bad(f"JSON nested deeper than {MAX_NESTING} levels", None, "invalid_json")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("request body is not valid UTF-8", None, "invalid_json") from None
    try:
        body = json.loads(text, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise _bad(f"request body is not valid JSON: {exc}", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise _bad(f"request body must be a JSON object, not {type(body).__name__}", None,
                   "invalid_json")
    return body


# -- field checks ------------------------------------------------------------------------

def _is_int(value: Any) -> bool:
    """JSON Schema's integer: ``3`` and ``3.0`` (JSON does not tell them apart)."""
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _model(body: dict[str, Any]) -> None:
    model = body.get("model")
    if "model" not in body or model is None:
        raise _bad("you must provide a model parameter", "model", "missing_required_parameter")
    if not isinstance(model, str):
        raise _bad("model must be a string", "model")
    if not model:  # (whitespace is merely a model nobody placed: 404 later)
        raise _bad("model must not be empty", "model")
    if len(model) > 256:
        raise _bad("model is longer than 256 characters", "model")


def _optional_bool(body: dict[str, Any], name: str) -> None:
    if name in body and body[name] is not None and not isinstance(body[name], bool):
        raise _bad(f"{name} must be a boolean", name)


def _optional_range(body: dict[str, Any], name: str, low: float, high: float) -> None:
    if name not in body or body[name] is None:
        return
    value = body[name]
    if not _is_number(value):
        raise _bad(f"{name} must be a number", name)
    if not low <= value <= high:
        raise _bad(f"{name} must be between {low:g} and {high:g}, got {value}", name)


def _optional_int(body: dict[str, Any], name: str, low: int, high: int | None = None) -> None:
    if name not in body or body[name] is None:
        return
    value = body[name]
    if not _is_int(value):
        raise _bad(f"{name} must be an integer", name)
    if value < low or (high is not None and value > high):
        bound = f"at least {low}" if high is None else f"between {low} and {high}"
        raise _bad(f"{name} must be {bound}, got {value}", name)


def _stop(body: dict[str, Any]) -> None:
    stop = body.get("stop")
    if stop is None:
        return
    if isinstance(stop, str):
        return
    if isinstance(stop, list) and len(stop) <= 16 and all(isinstance(s, str) for s in stop):
        return
    raise _bad("stop must be a string or a list of at most 16 strings", "stop")


def _stream_options(body: dict[str, Any]) -> None:
    options = body.get("stream_options")
    if options is None:
        return
    if not isinstance(options, dict):
        raise _bad("stream_options must be an object", "stream_options")
    if "include_usage" in options and not isinstance(options["include_usage"], bool):
        raise _bad("stream_options.include_usage must be a boolean",
                   "stream_options.include_usage")


def _sampling(body: dict[str, Any]) -> None:
    _optional_bool(body, "stream")
    _optional_range(body, "temperature", 0, 2)
    _optional_range(body, "top_p", 0, 1)
    _optional_range(body, "presence_penalty", -2, 2)
    _optional_range(body, "frequency_penalty", -2, 2)
    _optional_int(body, "max_tokens", 1)
    _optional_int(body, "n", 1, 128)
    _optional_int(body, "seed", -(2**63), 2**63 - 1)
    _stop(body)
    _stream_options(body)
    if "user" in body and body["user"] is not None and not isinstance(body["user"], str):
        raise _bad("user must be a string", "user")


def _chat_tools(tools: Any, param: str = "tools") -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise _bad("tools must be an array", param)
    for i, tool in enumerate(tools):
        where = f"{param}[{i}]"
        if not isinstance(tool, dict):
            raise _bad(f"{where} must be an object", where)
        if tool.get("type") != "function":
            raise _bad(f"{where}.type must be 'function'", f"{where}.type")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise _bad(f"{where}.function must be an object", f"{where}.function")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"{where}.function.name must be a non-empty string",
                       f"{where}.function.name")
        if "parameters" in function and not isinstance(function["parameters"], dict):
            raise _bad(f"{where}.function.parameters must be an object",
                       f"{where}.function.parameters")


def _tool_choice(body: dict[str, Any]) -> None:
    choice = body.get("tool_choice")
    if choice is None or choice in ("none", "auto", "required"):
        return
    if isinstance(choice, dict) and choice.get("type") in ("function", "allowed_tools",
                                                           "custom"):
        return
    raise _bad("tool_choice must be 'none', 'auto', 'required' or a tool object", "tool_choice")


_CHAT_ROLES = ("system", "user", "assistant", "tool", "developer", "function")


def _messages(messages: Any) -> None:
    if messages is None:
        raise _bad("you must provide a messages parameter", "messages",
                   "missing_required_parameter")
    if not isinstance(messages, list):
        raise _bad("messages must be an array", "messages")
    if not messages:
        raise _bad("messages must contain at least one message", "messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(f"{where} must be an object", where)
        role = message.get("role")
        if role is None:
            raise _bad(f"{where}.role is required", f"{where}.role",
                       "missing_required_parameter")
        if role not in _CHAT_ROLES:
            raise _bad(f"{where}.role must be one of {', '.join(_CHAT_ROLES)}", f"{where}.role")
        content = message.get("content")
        if content is None:
            if role == "assistant" and message.get("tool_calls"):
                continue
            if role == "assistant" and "content" in message:
                continue
            raise _bad(f"{where}.content is required", f"{where}.content",
                       "missing_required_parameter")
        _content_parts(content, where)


def _content_parts(content: Any, where: str) -> None:
    """A message's content: a string, or an array of typed parts."""
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _bad(f"{where}.content must be a string or an array of parts", f"{where}.content")
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _bad(f"{where}.content[{j}] must be an object with a type",
                       f"{where}.content[{j}]")


def _response_format(body: dict[str, Any]) -> None:
    fmt = body.get("response_format")
    if fmt is None:
        return
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object",
                                                            "json_schema"):
        raise _bad("response_format.type must be text, json_object or json_schema",
                   "response_format")
    if fmt["type"] == "json_schema" and not isinstance(fmt.get("json_schema"), dict):
        raise _bad("response_format.json_schema must be an object",
                   "response_format.json_schema")


def validate_chat(body: dict[str, Any]) -> None:
    _model(body)
    _messages(body.get("messages"))
    _sampling(body)
    _optional_int(body, "max_completion_tokens", 1)
    _optional_bool(body, "logprobs")
    _optional_int(body, "top_logprobs", 0, 20)
    _chat_tools(body.get("tools"))
    _tool_choice(body)
    _response_format(body)


def validate_completions(body: dict[str, Any]) -> None:
    _model(body)
    prompt = body.get("prompt")
    if prompt is None:
        raise _bad("you must provide a prompt parameter", "prompt",
                   "missing_required_parameter")
    ok = (isinstance(prompt, str)
          or (isinstance(prompt, list) and prompt
              and (all(isinstance(p, str) for p in prompt)
                   or all(_is_int(p) for p in prompt)
                   or all(isinstance(p, list) and all(_is_int(t) for t in p)
                          for p in prompt))))
    if not ok:
        raise _bad("prompt must be a string, an array of strings or an array of token ids",
                   "prompt")
    _sampling(body)
    _optional_int(body, "logprobs", 0, 20)
    _optional_bool(body, "echo")
    _optional_int(body, "best_of", 1, 128)
    if "suffix" in body and body["suffix"] is not None and not isinstance(body["suffix"], str):
        raise _bad("suffix must be a string", "suffix")


def validate_embeddings(body: dict[str, Any]) -> None:
    _model(body)
    value = body.get("input")
    if value is None:
        raise _bad("you must provide an input parameter", "input",
                   "missing_required_parameter")
    ok = ((isinstance(value, str))
          or (isinstance(value, list) and value
              and (all(isinstance(v, str) for v in value)
                   or all(_is_int(v) for v in value)
                   or all(isinstance(v, list) and v and all(_is_int(t) for t in v)
                          for v in value))))
    if not ok:
        raise _bad("input must be a non-empty string, array of strings or token arrays",
                   "input")
    if isinstance(value, str) and not value:
        raise _bad("input must not be empty", "input")
    if body.get("encoding_format") not in (None, "float", "base64"):
        raise _bad("encoding_format must be 'float' or 'base64'", "encoding_format")
    _optional_int(body, "dimensions", 1, MAX_EMBEDDING_DIMENSIONS)


_RESPONSE_ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning",
                        "item_reference")
_RESPONSE_ROLES = ("user", "system", "developer", "assistant")


def _responses_input(value: Any) -> None:
    if value is None:
        raise _bad("you must provide an input parameter", "input",
                   "missing_required_parameter")
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise _bad("input must be a string or an array of input items", "input")
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(f"{where} must be an object", where)
        kind = item.get("type", "message")
        if kind not in _RESPONSE_ITEM_TYPES:
            raise _bad(f"{where}.type {kind!r} is not supported", f"{where}.type")
        if kind == "message":
            if item.get("role") not in _RESPONSE_ROLES:
                raise _bad(f"{where}.role must be one of {', '.join(_RESPONSE_ROLES)}",
                           f"{where}.role")
            _content_parts(item.get("content"), where)
        elif kind == "function_call":
            for name in ("call_id", "name", "arguments"):
                if not isinstance(item.get(name), str):
                    raise _bad(f"{where}.{name} must be a string", f"{where}.{name}")
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise _bad(f"{where}.call_id must be a string", f"{where}.call_id")
            if not isinstance(item.get("output"), (str, list)):
                raise _bad(f"{where}.output must be a string", f"{where}.output")


def _responses_tools(tools: Any) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise _bad("tools must be an array", "tools")
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise _bad(f"{where} must be an object with a type", where)
        if tool["type"] == "function" and (not isinstance(tool.get("name"), str)
                                           or not tool["name"]):
            raise _bad(f"{where}.name must be a non-empty string", f"{where}.name")
        if "parameters" in tool and tool["parameters"] is not None \
                and not isinstance(tool["parameters"], dict):
            raise _bad(f"{where}.parameters must be an object", f"{where}.parameters")


def validate_responses(body: dict[str, Any]) -> None:
    _model(body)
    _responses_input(body.get("input"))
    _optional_bool(body, "stream")
    _optional_bool(body, "store")
    _optional_range(body, "temperature", 0, 2)
    _optional_range(body, "top_p", 0, 1)
    _optional_int(body, "max_output_tokens", 1)
    if body.get("instructions") is not None and not isinstance(body["instructions"], str):
        raise _bad("instructions must be a string", "instructions")
    prev = body.get("previous_response_id")
    if prev is not None and (not isinstance(prev, str) or not prev):
        raise _bad("previous_response_id must be a non-empty string", "previous_response_id")
    text = body.get("text")
    if text is not None:
        if not isinstance(text, dict):
            raise _bad("text must be an object", "text")
        fmt = text.get("format")
        if fmt is not None and (not isinstance(fmt, dict)
                                or fmt.get("type") not in ("text", "json_object",
                                                           "json_schema")):
            raise _bad("text.format.type must be text, json_object or json_schema",
                       "text.format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and \
                not isinstance(fmt.get("schema"), dict):
            raise _bad("text.format.schema must be an object", "text.format.schema")
    _responses_tools(body.get("tools"))
    _tool_choice(body)


VALIDATORS = {
    "/v1/chat/completions": validate_chat,
    "/v1/completions": validate_completions,
    "/v1/embeddings": validate_embeddings,
    "/v1/responses": validate_responses,
}


def validate(path: str, raw: bytes, max_bytes: int) -> dict[str, Any]:
    """Parse and validate the body of a POST to ``path``; return the decoded body."""
    body = parse_body(raw, max_bytes)
    VALIDATORS[path](body)
    return body
