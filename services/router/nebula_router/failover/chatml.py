"""A chat stream continued through ``/v1/completions`` on the ChatML template (llama.cpp).

llama-cpp-python's chat endpoint closes every assistant message it is given with
``<|im_end|>``: it cannot continue a partial answer. Its completions endpoint can. The
router renders the conversation exactly as the server's ``chatml`` chat format does
(``llama_cpp.llama_chat_format.format_chatml``, which the node starts it with), leaves the
assistant turn open, appends the text the client already got, and adds the template's end
of turn to the client's stops, as the chat endpoint does. The completions chunks that come
back are rewritten into chat chunks (:class:`.rewrite.Rewriter`, ``from_completions``).

Refused (:class:`NotResumable`) where the rendering could not be the server's own: tools
or functions (the server then constrains the output with a grammar), a role other than
system, user and assistant, content that is not a string (parts, images), and a llama
``grammar`` (it would restart from the beginning).
"""

from __future__ import annotations

from typing import Any

from .continuation import BUDGETS, Continuation, NotResumable

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
"""ChatML's end of turn: the stop the server's chat endpoint adds to the client's."""

ROLES = frozenset({"system", "user", "assistant"})
TOOL_FIELDS = ("tools", "tool_choice", "functions", "function_call")
CHAT_ONLY = ("messages", *TOOL_FIELDS, "parallel_tool_calls", "response_format",
             "continue_final_message", "add_generation_prompt", *BUDGETS)
"""Chat fields the completions request does not carry (``max_tokens`` is set anew)."""


def render(messages: object) -> str:
    """The prompt llama-cpp-python's ``chatml`` format makes of ``messages``, the assistant
    turn left open; raises NotResumable for what it would not render as written."""
    if not isinstance(messages, list):
        raise NotResumable("no messages")
    system: str | None = None
    turns: list[tuple[str, str]] = []
    for message in messages:
        if not isinstance(message, dict):
            raise NotResumable("a message is not an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise NotResumable(f"a {role!r} message has no ChatML rendering here")
        if not isinstance(content, str):
            raise NotResumable("a message's content is not a string")
        if message.get("tool_calls") or message.get("function_call"):
            raise NotResumable("a message carries tool calls")
        if role == "system":
            if system is None:  # the server keeps the first system message only
                system = content
            continue
        turns.append((role, content))
    out = f"{IM_START}system\n{system or ''}{IM_END}\n"
    for role, content in turns:
        # As the server's _format_chatml: an empty message gets no end of turn.
        out += f"{IM_START}{role}\n{content}{IM_END}\n" if content else f"{IM_START}{role}\n"
    return out + f"{IM_START}assistant\n"


def request_problem(request: dict[str, Any]) -> str:
    """Why the chat ``request`` cannot be continued on ChatML ("" if it can)."""
    if any(request.get(name) for name in TOOL_FIELDS):
        return "tools cannot be continued through the ChatML template"
    if request.get("grammar") is not None:
        return "a grammar would restart from the beginning"
    try:
        render(request.get("messages"))
    except NotResumable as exc:
        return str(exc)
    return ""


def completion_body(request: dict[str, Any], cont: Continuation) -> dict[str, Any]:
    """The ``/v1/completions`` request that continues the chat ``request`` as ``cont``
    does (its reduced budgets, sampling, seed and stops); raises NotResumable."""
    problem = request_problem(request)
    if problem:
        raise NotResumable(problem)
    if cont.body is None:
        raise NotResumable("nothing to ask")
    body = {k: v for k, v in cont.body.items() if k not in CHAT_ONLY}
    body["prompt"] = render(request["messages"]) + cont.text
    # The chat endpoint reads max_tokens only (default: no limit); completions default to 16.
    body["max_tokens"] = 1 if cont.drop else cont.body.get("max_tokens")
    stop = request.get("stop")
    stops = [stop] if isinstance(stop, str) else list(stop) if isinstance(stop, list) else []
    body["stop"] = [*stops, IM_END]
    return body
