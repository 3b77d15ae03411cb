"""The resumed stream's chunks, rewritten so the client sees one uninterrupted stream.

Every chunk gets the first stream's ``id``, ``created``, ``model`` and
``system_fingerprint``; choice indices stay as they were; the role delta the client
already got is not sent again (nor chunks left empty by that); one finish reason and one
``[DONE]``; the usage chunk counts the prompt once and every completion token: the
continuation's prompt holds the ``done`` tokens already generated, so they move from its
prompt count to its completion count. A chat stream continued through ``/v1/completions``
(:mod:`.chatml`, ``from_completions``) has its completions chunks turned into chat chunks
first, as llama-cpp-python's own chat endpoint turns them. Fed complete SSE frames; pure,
no IO.
"""

from __future__ import annotations

import json
from typing import Any

from .events import frames
from .reassembly import CHAT_OBJECT, COMPLETION_OBJECT, StreamState

DONE = b"data: [DONE]\n\n"


def _frame(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() \
        + b"\n\n"


class Rewriter:
    """Rewrites one continuation's stream against what the client already got (``state``)."""

    def __init__(self, state: StreamState, *, drop: bool = False,
                 finish_reason: str | None = None) -> None:
        self.state = state
        self.drop = drop
        self.done_tokens = state.tokens
        self.finish_reason = finish_reason
        """Forced on the continuation's finish (``drop``: the budget was already spent)."""
        self.finished = {i: c.finish_reason is not None for i, c in state.choices.items()}
        self.roles = {i for i, c in state.choices.items() if c.role is not None}
        self.usage_sent = state.usage is not None
        self.ended = state.done
        """``[DONE]`` was sent (the stream is complete)."""
        self.from_completions = False
        """The continuation streams completions chunks for this chat stream (set per
        replica: it depends on how the replica continues)."""

    def feed(self, data: bytes) -> bytes:
        """The client's bytes for complete frames ``data`` of the continuation."""
        out: list[bytes] = []
        for raw, text in frames(data):
            if text is None:
                out.append(raw)  # a comment or bare event line: harmless, passed on
                continue
            if text.strip() == "[DONE]":
                if not self.ended:
                    self.ended = True
                    out.append(DONE)
                continue
            try:
                obj = json.loads(text)
            except ValueError:
                out.append(raw)
                continue
            if not isinstance(obj, dict) or "error" in obj:
                out.append(raw)  # the engine's own error event ends the stream honestly
                continue
            rewritten = self.chunk(obj)
            if rewritten is not None:
                out.append(_frame(rewritten))
        return b"".join(out)

    def chunk(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """One continuation chunk as the client must see it; None to drop it."""
        st = self.state
        if self.from_completions and obj.get("object") == COMPLETION_OBJECT:
            obj = self.as_chat(obj)
        obj["id"], obj["created"], obj["model"] = st.id, st.created, st.model
        has_fp, fp = st.fingerprint
        if has_fp:
            obj["system_fingerprint"] = fp
        else:
            obj.pop("system_fingerprint", None)
        usage = obj.get("usage")
        if isinstance(usage, dict):
            if self.usage_sent:
                obj["usage"] = None
            else:
                obj["usage"] = self.usage(usage)
                self.usage_sent = True
        choices = obj.get("choices")
        if isinstance(choices, list):
            obj["choices"] = [c for c in (self.choice(c) for c in choices) if c is not None]
            if not obj["choices"] and not isinstance(obj.get("usage"), dict):
                return None
        return obj

    def as_chat(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A completions chunk as the chat chunk of the same text (a role delta where the
        client has none yet); ``choice`` then drops what is left empty."""
        obj["object"] = CHAT_OBJECT
        choices = obj.get("choices")
        if not isinstance(choices, list):
            return obj
        out: list[Any] = []
        for c in choices:
            if not isinstance(c, dict):
                out.append(c)
                continue
            index = c.get("index", 0)
            delta: dict[str, Any] = {} if index in self.roles else {"role": "assistant"}
            if isinstance(c.get("text"), str) and c["text"]:
                delta["content"] = c["text"]
            out.append({"index": index, "delta": delta, "logprobs": None,
                        "finish_reason": c.get("finish_reason")})
        obj["choices"] = out
        return obj

    def choice(self, choice: Any) -> Any:
        if not isinstance(choice, dict):
            return choice
        index = choice.get("index", 0)
        chat = self.state.object != COMPLETION_OBJECT
        delta = choice.get("delta") if chat else None
        if self.drop:
            if chat:
                choice["delta"] = delta = {}
            else:
                choice["text"] = ""
        if isinstance(delta, dict) and "role" in delta:
            if index in self.roles:
                del delta["role"]
            else:
                self.roles.add(index)
        if choice.get("finish_reason") is not None:
            if self.finished.get(index):
                choice["finish_reason"] = None
            else:
                self.finished[index] = True
                if self.finish_reason is not None:
                    choice["finish_reason"] = self.finish_reason
        if choice.get("finish_reason") is None and choice.get("logprobs") is None:
            if chat and isinstance(delta, dict) and not any(
                    v not in (None, "") for v in delta.values()):
                return None
            if not chat and not choice.get("text"):
                return None
        return choice

    def usage(self, usage: dict[str, Any]) -> dict[str, Any]:
        """Prompt once, completion tokens of both replicas (see the module's text)."""
        done = self.done_tokens
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        out = dict(usage)
        if isinstance(prompt, int) and isinstance(completion, int):
            out["prompt_tokens"] = max(prompt - done, 0)
            out["completion_tokens"] = done + (0 if self.drop else completion)
            out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
            details = out.get("prompt_tokens_details")
            if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
                out["prompt_tokens_details"] = {
                    **details, "cached_tokens": min(details["cached_tokens"],
                                                    out["prompt_tokens"])}
        return out

    def local_end(self) -> bytes:
        """The end of a stream whose answer is complete, made here (no replica asked).

        Only when the client already has its usage or asked for none: the router cannot
        count a prompt itself.
        """
        st = self.state
        out = []
        base: dict[str, Any] = {"id": st.id, "object": st.object, "created": st.created,
                                "model": st.model}
        if st.fingerprint[0]:
            base["system_fingerprint"] = st.fingerprint[1]
        for index, done in sorted(self.finished.items()):
            if not done:
                self.finished[index] = True
                choice: dict[str, Any] = {"index": index, "logprobs": None,
                                          "finish_reason": self.finish_reason or "length"}
                if st.object == COMPLETION_OBJECT:
                    choice["text"] = ""
                else:
                    choice["delta"] = {}
                out.append(_frame({**base, "choices": [choice]}))
        if not self.ended:
            self.ended = True
            out.append(DONE)
        return b"".join(out)
