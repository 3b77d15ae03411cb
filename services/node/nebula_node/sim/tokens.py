"""Deterministic tokenizer and text generator: cheap, stable, no model needed.

One token is four characters of text (rounded up), so a 64-character prefix
block is exactly 16 tokens and counting is O(1). Generated text is a walk over a
fixed vocabulary seeded by a hash of the prompt: same prompt, same answer.
"""

from __future__ import annotations

import hashlib

CHARS_PER_TOKEN = 4

# Each entry is one generated token; the leading space keeps the text readable.
VOCAB: tuple[str, ...] = tuple(
    " " + w
    for w in (
        "the nebula routes every request to a ready replica while the scheduler places "
        "models on nodes and the gateway keeps keys limits and traces in order so that "
        "streams arrive quickly tokens flow steadily caches stay warm and operators sleep "
        "through the night because failures heal themselves"
    ).split()
)


def count_tokens(text: str) -> int:
    """Tokens in ``text``: one per four characters, rounded up."""
    return -(-len(text) // CHARS_PER_TOKEN)


def prompt_seed(prompt: str) -> int:
    """A stable 64-bit seed from the prompt (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=8).digest(), "big")


def generate_tokens(prompt: str, n: int) -> list[str]:
    """``n`` tokens derived from ``prompt``: a stride walk over :data:`VOCAB`."""
    seed = prompt_seed(prompt)
    size = len(VOCAB)
    start = seed % size
    stride = 1 + (seed >> 16) % (size - 1)
    return [VOCAB[(start + i * stride) % size] for i in range(n)]


def plan_output(requested: int | None, default: int, prompt_tokens: int,
                max_model_len: int) -> tuple[int, str]:
    """How many tokens to generate and the finish reason.

    Without a limit in the request the sim "naturally" stops after ``default``
    tokens (``stop``); with one it generates exactly that many (``length``), as a
    model that never emits EOS would. The context window caps both.
    """
    room = max(0, max_model_len - prompt_tokens)
    if requested is None:
        n, reason = default, "stop"
    else:
        n, reason = requested, "length"
    if n >= room:
        return room, "length"
    return n, reason
