"""The Batch API's pure parts: line validation, result and error lines, the batch object
and its status transitions (no IO; :mod:`.batches_runner` and :mod:`.batches` use them).

Shapes follow OpenAI's Batch API: an input line is ``{"custom_id", "method": "POST",
"url", "body"}``; a result line ``{"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error"}``; an invalid input fails the batch with
``errors: {"object": "list", "data": [{"code", "message", "param", "line"}]}``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
COMPLETION_WINDOWS = ("24h",)
WINDOW_S = 24 * 3600
"""How long a batch has to finish (``--batch-window`` shortens it, for tests): past
``expires_at`` it is ``expired``, its unfinished lines in the error file."""
EXPIRED_CODE = "batch_expired"
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
MAX_LINES = 50_000
"""Lines one batch may have (OpenAI's limit)."""
MAX_ERRORS = 100
"""Validation errors reported at most (the first ones, by line)."""

# statuses, and the moves between them (the executor's and a cancel's)
VALIDATING, IN_PROGRESS, FINALIZING = "validating", "in_progress", "finalizing"
COMPLETED, FAILED, CANCELLING, CANCELLED, EXPIRED = (
    "completed", "failed", "cancelling", "cancelled", "expired")
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED, EXPIRED})
TRANSITIONS: dict[str, frozenset[str]] = {
    VALIDATING: frozenset({IN_PROGRESS, FAILED, CANCELLING, EXPIRED}),
    IN_PROGRESS: frozenset({FINALIZING, CANCELLING, EXPIRED}),
    FINALIZING: frozenset({COMPLETED, CANCELLING}),
    CANCELLING: frozenset({CANCELLED}),
}
STAMP = {IN_PROGRESS: "in_progress_at", FINALIZING: "finalizing_at",
         COMPLETED: "completed_at", FAILED: "failed_at", CANCELLING: "cancelling_at",
         CANCELLED: "cancelled_at", EXPIRED: "expired_at"}


class TransitionError(ValueError):
    """A move the batch's status does not allow (e.g. cancelling a completed batch)."""


def transition(batch: dict[str, Any], status: str, now: int) -> dict[str, Any]:
    """The batch moved to ``status`` at ``now`` (its timestamp set); raises
    :class:`TransitionError` when its current status does not lead there."""
    current = batch["status"]
    if status not in TRANSITIONS.get(current, frozenset()):
        raise TransitionError(f"a batch that is {current} cannot become {status}")
    return {**batch, "status": status, STAMP[status]: now}


def new_batch(batch_id: str, endpoint: str, input_file_id: str, window: str,
              metadata: dict[str, str] | None, now: int, window_s: int = WINDOW_S
              ) -> dict[str, Any]:
    """A batch just created (validating), as ``GET /v1/batches/{id}`` returns it."""
    return {"id": batch_id, "object": "batch", "endpoint": endpoint, "errors": None,
            "input_file_id": input_file_id, "completion_window": window,
            "status": VALIDATING, "output_file_id": None, "error_file_id": None,
            "created_at": now, "in_progress_at": None, "expires_at": now + window_s,
            "finalizing_at": None, "completed_at": None, "failed_at": None,
            "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": metadata}


@dataclass(frozen=True, slots=True)
class Line:
    """One valid input line: its position (0-based), custom_id and request body."""

    index: int
    custom_id: str
    body: dict[str, Any]


def _error(code: str, message: str, line: int | None, param: str | None = None
           ) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def validate_lines(content: bytes, endpoint: str
                   ) -> tuple[list[Line], list[dict[str, Any]]]:
    """Every line of an input file checked up front: (lines, errors); the batch fails
    when there is any error (lines are 1-based in errors, as OpenAI numbers them)."""
    lines: list[Line] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return [], [_error("invalid_file", "the input file is not UTF-8 text", None)]
    numbered = [(n, raw) for n, raw in enumerate(text.splitlines(), 1) if raw.strip()]
    if not numbered:
        return [], [_error("empty_file", "the input file has no lines", None)]
    if len(numbered) > MAX_LINES:
        return [], [_error("too_many_requests", f"the input file has {len(numbered)} lines; "
                           f"a batch takes at most {MAX_LINES}", None)]
    for n, raw in numbered:
        problem = _line_problem(raw, endpoint, seen, n)
        if isinstance(problem, dict):
            errors.append(problem)
        else:
            seen.add(problem.custom_id)
            lines.append(Line(len(lines), problem.custom_id, problem.body))
    return lines, errors[:MAX_ERRORS]


def _line_problem(raw: str, endpoint: str, seen: set[str], n: int) -> Line | dict[str, Any]:
    try:
        item = json.loads(raw)
    except ValueError:
        return _error("invalid_json_line", "this line is not valid JSON", n)
    if not isinstance(item, dict):
        return _error("invalid_json_line", "this line is not a JSON object", n)
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return _error("missing_required_parameter", "custom_id must be a non-empty string",
                      n, "custom_id")
    if custom_id in seen:
        return _error("duplicate_custom_id", f"custom_id {custom_id!r} is used by an "
                      "earlier line; each must be unique", n, "custom_id")
    if item.get("method") != "POST":
        return _error("invalid_method", "method must be POST", n, "method")
    if item.get("url") != endpoint:
        return _error("mismatched_endpoint", f"url must be the batch's endpoint {endpoint}",
                      n, "url")
    body = item.get("body")
    if not isinstance(body, dict):
        return _error("invalid_request", "body must be a JSON object", n, "body")
    if body.get("stream"):
        return _error("invalid_request", "stream is not supported in a batch", n,
                      "body.stream")
    return Line(0, custom_id, body)


def result_line(custom_id: str, status: int, request_id: str, body: bytes) -> bytes:
    """One line of the output (2xx) or error file (the others), as OpenAI writes it."""
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        parsed = {"error": {"message": body.decode("utf-8", "replace")[:1000],
                            "type": "server_error", "param": None, "code": None}}
    return json.dumps({"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id,
                       "response": {"status_code": status, "request_id": request_id,
                                    "body": parsed},
                       "error": None}, separators=(",", ":")).encode()


def failed_line(custom_id: str, code: str, message: str) -> bytes:
    """An error-file line for a request that never got an answer (e.g. the window ended)."""
    return json.dumps({"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id,
                       "response": None, "error": {"code": code, "message": message}},
                      separators=(",", ":")).encode()


def expired_lines(lines: list[Line], results: dict[int, tuple[bool, bytes]]
                  ) -> dict[int, tuple[bool, bytes]]:
    """The error-file lines of an expired batch's lines that have no result (by index)."""
    return {line.index: (False, failed_line(line.custom_id, EXPIRED_CODE, EXPIRED_MESSAGE))
            for line in lines if line.index not in results}


def assemble(results: dict[int, tuple[bool, bytes]]) -> tuple[bytes, bytes]:
    """(output file, error file) from the finished lines, in input order."""
    out = [line for _, (ok, line) in sorted(results.items()) if ok]
    err = [line for _, (ok, line) in sorted(results.items()) if not ok]
    return (b"".join(x + b"\n" for x in out), b"".join(x + b"\n" for x in err))


def present(batch: dict[str, Any], counts: tuple[int, int] | None,
            cancelling_at: int | None) -> dict[str, Any]:
    """The batch as the API shows it now: live counts while it runs, ``cancelling`` once
    a cancel was asked and before the executor finished it."""
    shown = dict(batch)
    if counts is not None and batch["status"] not in TERMINAL:
        shown["request_counts"] = {**batch["request_counts"], "completed": counts[0],
                                   "failed": counts[1]}
    if cancelling_at is not None and batch["status"] not in TERMINAL:
        shown["status"] = CANCELLING
        shown["cancelling_at"] = cancelling_at
    return shown
