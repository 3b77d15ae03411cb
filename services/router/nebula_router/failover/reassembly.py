"""What the client already got, re-assembled from the forwarded bytes once a stream broke.

Chat (``chat.completion.chunk``) and completions (``text_completion``) streams: the
stream's identity (id, created, model, system_fingerprint), and per choice its role,
text, the number of chunks that carried text (one token each, as vLLM, llama.cpp's
server and the sim stream), tool-call deltas, finish reason; the usage chunk and
``[DONE]``. Anything a continuation cannot carry exactly sets ``problem``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .events import payloads

CHAT_OBJECT = "chat.completion.chunk"
COMPLETION_OBJECT = "text_completion"


@dataclass
class ChoiceState:
    index: int
    role: str | None = None
    text: str = ""
    chunks: int = 0
    """Chunks that carried text: the tokens already generated."""
    tool_calls: bool = False
    finish_reason: str | None = None


@dataclass
class StreamState:
    kind: str = ""
    """``chat`` or ``completion`` ("" when no chunk was seen)."""
    id: Any = None
    created: Any = None
    model: Any = None
    object: str = ""
    fingerprint: tuple[bool, Any] = (False, None)
    """(the chunks carry ``system_fingerprint``, its value)."""
    choices: dict[int, ChoiceState] = field(default_factory=dict)
    usage: dict[str, Any] | None = None
    done: bool = False
    problem: str = ""
    """Why no continuation can be exact ("" when one can)."""

    @property
    def tokens(self) -> int:
        """Completion tokens the client already got, over every choice."""
        return sum(c.chunks for c in self.choices.values())


def reassemble(data: bytes) -> StreamState:
    """The client's view of a stream from the bytes it was sent (complete frames)."""
    state = StreamState()
    for text in payloads(data):
        if text is None:
            continue
        if text.strip() == "[DONE]":
            state.done = True
            continue
        try:
            obj = json.loads(text)
        except ValueError:
            state.problem = "a frame is not JSON"
            continue
        _fold(state, obj)
    if not state.kind and not state.problem:
        state.problem = "no chunk was sent yet" if not data else "not a chat or completions stream"
    return state


def _fold(state: StreamState, obj: object) -> None:
    if not isinstance(obj, dict) or "error" in obj:
        state.problem = "the stream carried an error"
        return
    kind = {CHAT_OBJECT: "chat", COMPLETION_OBJECT: "completion"}.get(obj.get("object", ""))
    choices = obj.get("choices")
    if kind is None or not isinstance(choices, list):
        state.problem = "not a chat or completions stream"
        return
    if not state.kind:
        state.kind, state.object = kind, obj["object"]
        state.id, state.created, state.model = obj.get("id"), obj.get("created"), obj.get("model")
        if "system_fingerprint" in obj:
            state.fingerprint = (True, obj["system_fingerprint"])
    usage = obj.get("usage")
    if isinstance(usage, dict):
        state.usage = usage
    for choice in choices:
        if not isinstance(choice, dict) or not isinstance(choice.get("index", 0), int):
            state.problem = "a choice is not an object with an index"
            continue
        index = choice.get("index", 0)
        cs = state.choices.get(index)
        if cs is None:
            cs = state.choices[index] = ChoiceState(index)
        if choice.get("logprobs") is not None:
            state.problem = "logprobs cannot be resumed"
        if kind == "chat":
            _fold_delta(state, cs, choice.get("delta"))
        else:
            piece = choice.get("text")
            if isinstance(piece, str) and piece:
                cs.text += piece
                cs.chunks += 1
        if choice.get("finish_reason") is not None:
            cs.finish_reason = choice["finish_reason"]


def _fold_delta(state: StreamState, cs: ChoiceState, delta: object) -> None:
    if not isinstance(delta, dict):
        return
    for key, value in delta.items():
        if key == "role":
            if isinstance(value, str):
                cs.role = value
        elif key == "content":
            if isinstance(value, str) and value:
                cs.text += value
                cs.chunks += 1
        elif key == "tool_calls":
            if value:
                cs.tool_calls = True
        elif value not in (None, "", [], {}):
            # reasoning_content, refusal, function_call: not carried by a continuation
            state.problem = f"a {key!r} delta cannot be resumed"
