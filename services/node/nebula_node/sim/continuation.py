"""Continuation of a partial answer, exactly as a deterministic model continues one.

The sim's answer to a prompt P is a walk over its vocabulary seeded by P
(:func:`.tokens.generate_tokens`). A request that carries the first k tokens of that
answer (chat: a final assistant message with ``continue_final_message: true`` and
``add_generation_prompt: false``, vLLM's parameters; completions: the prompt followed by
the text) gets tokens k+1.. of the same walk, so the resumed text equals the
uninterrupted one byte for byte, and the natural stop comes after the same number of
tokens. Its prompt counts P's tokens plus k (the generated tokens are now prompt).

A completions prompt is read as "P + its own first k tokens" for the largest k that fits
(only trailing vocabulary words are candidates); a plain prompt that happens to end with
the first token(s) of its own shorter prefix's walk is therefore read as a continuation
too, which stays deterministic. Pure functions, no IO.
"""

from __future__ import annotations

from typing import Any

from .protocol import BadRequest, chat_prompt, content_text
from .tokens import VOCAB, generate_tokens

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MAX_RESUMED_TOKENS = 8192
"""The longest partial answer looked for (bounds the work on any prompt)."""

_VOCAB = frozenset(VOCAB)


def resume_point(path: str, body: dict[str, Any], prompt: str) -> tuple[str, str, int]:
    """(the context to prefill, the prompt that seeds the answer, tokens already generated).

    ``prompt`` is the body's flattened prompt; for a request that continues nothing the
    result is ``(prompt, prompt, 0)``. A 400 :class:`BadRequest` as vLLM answers for
    ``continue_final_message`` with ``add_generation_prompt`` or without a final
    assistant message.
    """
    if path == CHAT and body.get("continue_final_message"):
        if body.get("add_generation_prompt", True):
            raise BadRequest("Cannot set both `continue_final_message` and "
                             "`add_generation_prompt` to True.", "continue_final_message")
        messages = body["messages"]  # chat_prompt already checked it is a non-empty list
        last = messages[-1]
        if not isinstance(last, dict) or last.get("role") != "assistant":
            raise BadRequest("continue_final_message needs a final assistant message",
                             "messages")
        before = chat_prompt({"messages": messages[:-1]}) if len(messages) > 1 else ""
        context = before + content_text(last.get("content"))
        origin, done = split_walk(context, len(before))
        return context, origin, done
    if path == COMPLETIONS:
        origin, done = split_walk(prompt, 0)
        return prompt, origin, done
    return prompt, prompt, 0


def split_walk(context: str, floor: int = 0) -> tuple[str, int]:
    """``context`` as (P, k): P followed by the first k tokens of P's walk, k largest.

    P is never shorter than ``floor`` characters; (context, 0) when no k >= 1 fits.
    """
    cuts: list[int] = []
    end = len(context)
    while len(cuts) < MAX_RESUMED_TOKENS:
        at = context.rfind(" ", floor, end)
        if at < 0 or context[at:end] not in _VOCAB:
            break
        cuts.append(at)
        end = at
    for k in range(len(cuts), 0, -1):
        cut = cuts[k - 1]
        origin = context[:cut]
        if "".join(generate_tokens(origin, k)) == context[cut:]:
            return origin, k
    return context, 0
