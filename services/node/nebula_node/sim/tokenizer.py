"""The sim's ``/tokenize`` and ``/detokenize``, shaped as vLLM's.

A token is four characters of the flattened prompt (:mod:`tokens`), so the count of a
chat ``messages`` body is exactly the ``prompt_tokens`` of the same chat request. Token
ids encode their four characters, so ``/detokenize`` gives the text back.
"""

from __future__ import annotations

from typing import Any

from .protocol import BadRequest, chat_prompt
from .tokens import CHARS_PER_TOKEN

_BASE = 0x110000  # one digit per character (every Unicode code point)


def token_ids(text: str) -> list[int]:
    """``text`` as ids, one per four characters (the last piece may be shorter)."""
    ids = []
    for start in range(0, len(text), CHARS_PER_TOKEN):
        piece = text[start:start + CHARS_PER_TOKEN]
        value = 0
        for char in reversed(piece):
            value = value * _BASE + ord(char)
        ids.append(value * CHARS_PER_TOKEN + len(piece) - 1)
    return ids


def token_text(token: int) -> str:
    """The characters of one id (:func:`token_ids`' inverse); ValueError for a bad id."""
    if token < 0:
        raise ValueError(token)
    length, value = token % CHARS_PER_TOKEN + 1, token // CHARS_PER_TOKEN
    chars = []
    for _ in range(length):
        value, code = divmod(value, _BASE)
        chars.append(chr(code))
    if value:
        raise ValueError(token)
    return "".join(chars)


def tokenize(body: dict[str, Any], max_model_len: int) -> dict[str, Any]:
    """vLLM's TokenizeResponse for a ``prompt`` or chat ``messages`` request."""
    if isinstance(body.get("messages"), list):
        text = chat_prompt(body)
    elif isinstance(body.get("prompt"), str):
        text = body["prompt"]
    else:
        raise BadRequest("either 'prompt' (a string) or 'messages' is required", "prompt")
    ids = token_ids(text)
    return {"count": len(ids), "max_model_len": max_model_len, "tokens": ids,
            "token_strs": None}


def detokenize(body: dict[str, Any]) -> dict[str, Any]:
    """vLLM's DetokenizeResponse: ``{"prompt": text}``."""
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise BadRequest("'tokens' must be a list of token ids", "tokens")
    try:
        return {"prompt": "".join(token_text(t) for t in tokens)}
    except ValueError:
        raise BadRequest("'tokens' holds an id that is not in the vocabulary",
                         "tokens") from None
