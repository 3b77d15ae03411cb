"""Request validation at the edge: pure functions, no IO.

Every public endpoint's body is checked here before anything is forwarded, so
a malformed request costs the cluster nothing and the client gets OpenAI's
error object with ``param`` naming the offending field. What is checked is the
request contract (:mod:`contract`), the same specs ``/openapi.json`` publishes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .contract import ENDPOINTS

MAX_NESTING = 64
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


_BODY_DECODER = json.JSONDecoder(parse_constant=_no_constants)
"""Built once: ``json.loads`` with a hook builds a decoder per call (2 us a request)."""


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
        body = _BODY_DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        raise _bad(f"request body is not valid JSON: {exc}", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise _bad(f"request body must be a JSON object, not {type(body).__name__}", None,
                   "invalid_json")
    return body


def validate(path: str, raw: bytes, max_bytes: int) -> dict[str, Any]:
    """Parse and validate the body of a POST to ``path``; return the decoded body."""
    body = parse_body(raw, max_bytes)
    problem = ENDPOINTS[path].body.check(body)
    if problem is not None:
        raise ValidationError(400, problem.message, problem.param, problem.code)
    return body
