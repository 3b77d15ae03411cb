"""A streamed chat or completions answer taken apart, checked well-formed on the way."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass
class StreamParts:
    chunks: list[dict[str, Any]]
    text: str
    finishes: list[str]
    roles: int
    """How many deltas carried a role (one stream sends it once)."""
    usage: list[dict[str, Any]]


def read_stream(data: bytes) -> StreamParts:
    """Split ``data`` into its chunks: exactly one ``[DONE]``, last; no error event; every
    choice index 0; text from chat deltas or completions ``text``. Comment frames skipped."""
    events = [f.removeprefix(b"data: ").decode() for f in data.split(b"\n\n")
              if f.strip() and not f.startswith(b":")]
    assert events and events[-1] == "[DONE]" and events.count("[DONE]") == 1, data[-500:]
    chunks = [json.loads(e) for e in events[:-1]]
    assert not any("error" in c for c in chunks), data[-500:]
    text, finishes, roles = "", [], 0
    for c in chunks:
        for ch in c["choices"]:
            assert ch["index"] == 0
            if "delta" in ch:
                text += ch["delta"].get("content") or ""
                roles += "role" in ch["delta"]
            else:
                text += ch.get("text") or ""
            if ch.get("finish_reason"):
                finishes.append(ch["finish_reason"])
    return StreamParts(chunks, text, finishes, roles,
                       [c["usage"] for c in chunks if c.get("usage")])
