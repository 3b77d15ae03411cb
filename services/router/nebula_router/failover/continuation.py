"""The continuation request: the original request plus what the client already got.

- chat: the partial assistant message last, ``continue_final_message: true`` and
  ``add_generation_prompt: false`` (vLLM's parameters; the sim reads them too);
- completions: the prompt followed by the text generated so far;
- ``max_tokens`` / ``max_completion_tokens`` (and vLLM's ``min_tokens``) reduced by the
  tokens already generated; sampling, ``seed``, ``stop``, tools and every other field as
  the client sent them.

Refused (:class:`NotResumable`), so the stream ends with the SSE error event as before:
``n > 1`` and ``best_of``, logprobs, ``echo``, structured output (its grammar would restart
from the beginning), a completions prompt that is not one string, and a break after any
tool-call delta (the router cannot tell a complete call from a cut one until the finish
reason, and no engine continues a half-written call: see docs/reliability.md).

A stream whose answer is complete but whose end is missing (the finish reason came, or
the token budget is spent; only the usage chunk or ``[DONE]`` is missing) is finished
``local``-ly when no usage was asked for, else by a continuation with ``max_tokens: 1``
whose text is dropped (``drop``): it is asked only for the usage.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from .reassembly import StreamState

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
PATHS = frozenset({CHAT_PATH, COMPLETIONS_PATH})
"""The paths whose streams the router can resume."""

BUDGETS = ("max_tokens", "max_completion_tokens")
STRUCTURED = ("guided_json", "guided_regex", "guided_choice", "guided_grammar",
              "structured_outputs")
"""vLLM's structured-output extensions (``response_format`` aside)."""


class NotResumable(Exception):
    """No continuation can be exact; the message says why (for the log and the span)."""


@dataclass
class Continuation:
    body: dict[str, Any] | None
    """The request for the next replica; None: nothing to ask (finish ``local``-ly)."""
    drop: bool = False
    """The answer is complete: drop the continuation's text, keep only its usage and end."""
    finish_reason: str | None = None
    """The finish reason to send when the client has none yet and ``drop`` is set."""
    text: str = ""
    """The text the client already got (carried in ``body``; a ChatML prompt ends with it)."""


def request_problem(path: str, request: dict[str, Any]) -> str:
    """Why a stream of ``request`` on ``path`` cannot be resumed exactly ("" if it can)."""
    if path not in PATHS:
        return "not a chat or completions request"
    n = request.get("n")
    if n not in (None, 1) or request.get("best_of") not in (None, 1):
        return "n > 1"
    if request.get("logprobs") or request.get("top_logprobs") or request.get("prompt_logprobs"):
        return "logprobs"
    if request.get("echo"):
        return "echo"
    fmt = request.get("response_format")
    if (isinstance(fmt, dict) and fmt.get("type") not in (None, "text")) or any(
            request.get(k) is not None for k in STRUCTURED):
        return "structured output"
    if path == COMPLETIONS_PATH:
        prompt = request.get("prompt")
        if not (isinstance(prompt, str) or (isinstance(prompt, list) and len(prompt) == 1
                                            and isinstance(prompt[0], str))):
            return "the prompt is not one string"
    elif not isinstance(request.get("messages"), list):
        return "no messages"
    return ""


def include_usage(request: dict[str, Any]) -> bool:
    options = request.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def plan_continuation(path: str, request: dict[str, Any], state: StreamState) -> Continuation:
    """The continuation of ``request`` after the client got ``state``; raises NotResumable."""
    problem = request_problem(path, request) or state.problem
    if problem:
        raise NotResumable(problem)
    if len(state.choices) > 1:
        raise NotResumable("n > 1")
    if state.kind != ("chat" if path == CHAT_PATH else "completion"):
        raise NotResumable("the stream does not match the request's path")
    choice = next(iter(state.choices.values()), None)
    if choice is not None and choice.tool_calls:
        raise NotResumable("the break came after a tool-call delta")
    done = state.tokens
    text = choice.text if choice is not None else ""
    body = copy.deepcopy(request)
    spent = False
    for name in BUDGETS:
        limit = body.get(name)
        if isinstance(limit, int) and not isinstance(limit, bool):
            left = limit - done
            spent = spent or left <= 0
            body[name] = max(left, 1)
    if isinstance(body.get("min_tokens"), int):
        body["min_tokens"] = max(body["min_tokens"] - done, 0)
    finished = choice is not None and choice.finish_reason is not None
    if finished or spent:
        finish = None if finished else "length"
        if state.usage is not None or not include_usage(request):
            return Continuation(None, drop=True, finish_reason=finish)
        for name in BUDGETS:
            if name in body:
                body[name] = 1
        if not any(name in body for name in BUDGETS):
            body["max_tokens"] = 1
        _carry(path, body, text)
        return Continuation(body, drop=True, finish_reason=finish, text=text)
    _carry(path, body, text)
    return Continuation(body, text=text)


def _carry(path: str, body: dict[str, Any], text: str) -> None:
    """Put the text generated so far into ``body`` (nothing when there is none yet)."""
    if not text:
        return
    if path == COMPLETIONS_PATH:
        prompt = body["prompt"]
        body["prompt"] = prompt + text if isinstance(prompt, str) else [prompt[0] + text]
        return
    messages: list[Any] = body["messages"]
    last = messages[-1] if messages else None
    if (body.get("continue_final_message") and isinstance(last, dict)
            and last.get("role") == "assistant" and isinstance(last.get("content"), str)):
        # The client itself asked to continue its own partial message: extend that one.
        messages[-1] = {**last, "content": last["content"] + text}
    else:
        messages.append({"role": "assistant", "content": text})
    body["continue_final_message"] = True
    body["add_generation_prompt"] = False
