"""Routing quality: multi-turn conversations with shared system prompts over 4 sim replicas.

Each sim models vLLM's prefix cache (an LRU of prompt blocks) and charges
``--prefill-ms-per-token`` for every uncached prompt token before the first
token. A policy that sends a conversation back to the replica that already holds
its prefix therefore shows up directly in time to first token (TTFT) and in the
engines' cache-hit rate.

The workload is deterministic: ``prompts`` distinct system prompts of about
``system_tokens`` tokens each, ``conversations`` conversations (conversation i
uses prompt i mod ``prompts``) of ``turns`` turns; every turn sends the whole
history plus a new user message, streamed, and the client appends a fixed
assistant answer. Conversations run concurrently, turns within one in order.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .load import StreamTiming, stream_request, summarize_ms

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
         "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee "
         "zulu cache replica router gateway token stream prefix block").split()
CHARS_PER_TOKEN = 4  # the sim's tokenizer: one token per four characters


@dataclass(frozen=True)
class Workload:
    conversations: int = 16
    turns: int = 6
    prompts: int = 8
    system_tokens: int = 2000
    user_tokens: int = 40
    max_tokens: int = 16


def system_prompt(index: int, tokens: int) -> str:
    """A distinct, deterministic system prompt of about ``tokens`` tokens.

    It starts with its own index so two prompts differ from their first block on.
    """
    rng = random.Random(index)
    head = f"System prompt {index}: you are assistant number {index}. Rules follow."
    words = [head]
    size = len(head)
    while size < tokens * CHARS_PER_TOKEN:
        word = rng.choice(WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[: tokens * CHARS_PER_TOKEN]


def user_message(conversation: int, turn: int, tokens: int) -> str:
    rng = random.Random(conversation * 1000 + turn)
    text = f"Conversation {conversation} turn {turn}: " + " ".join(
        rng.choice(WORDS) for _ in range(tokens))
    return text[: tokens * CHARS_PER_TOKEN]


def conversation_turns(workload: Workload, conversation: int) -> list[list[dict[str, str]]]:
    """The ``messages`` list sent at every turn of one conversation (pure)."""
    messages = [{"role": "system",
                 "content": system_prompt(conversation % workload.prompts,
                                          workload.system_tokens)}]
    turns = []
    for turn in range(workload.turns):
        messages.append({"role": "user",
                         "content": user_message(conversation, turn, workload.user_tokens)})
        turns.append(list(messages))
        messages.append({"role": "assistant",
                         "content": f"Answer {turn} to conversation {conversation}."})
    return turns


@dataclass
class PolicyResult:
    policy: str
    ttft_ms: dict[str, float]
    hit_rate: float
    requests: int
    errors: int
    per_replica: dict[str, dict[str, Any]] = field(default_factory=dict)
    decisions: dict[str, int] = field(default_factory=dict)


async def run_workload(url: str, model: str, workload: Workload) -> list[StreamTiming]:
    """Drive every conversation through ``url``; one timing per request."""
    timings: list[StreamTiming] = []
    connector = aiohttp.TCPConnector(limit=workload.conversations)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def converse(index: int) -> None:
            for messages in conversation_turns(workload, index):
                body = json.dumps({"model": model, "messages": messages, "stream": True,
                                   "max_tokens": workload.max_tokens}).encode()
                timings.append(await stream_request(session, f"{url}/v1/chat/completions",
                                                    body))

        await asyncio.gather(*(converse(i) for i in range(workload.conversations)))
    return timings


def cache_hit_rate(stats: list[dict[str, Any]]) -> float:
    """Prompt tokens served from cache over prompt tokens queried, across replicas."""
    queries = sum(s.get("prefix_cache", {}).get("queries", 0) for s in stats)
    hits = sum(s.get("prefix_cache", {}).get("hits", 0) for s in stats)
    return hits / queries if queries else float("nan")


_DECISION = re.compile(r'^nebula_router_policy_decisions_total\{([^}]*)\}\s+([0-9.eE+]+)$')
_REASON = re.compile(r'reason="([^"]*)"')


def parse_decisions(metrics_text: str) -> dict[str, int]:
    """Routing decisions by reason from the router's Prometheus text (summed over policies)."""
    out: dict[str, int] = {}
    for line in metrics_text.splitlines():
        match = _DECISION.match(line.strip())
        if not match:
            continue
        reason = _REASON.search(match.group(1))
        if reason:
            key = reason.group(1)
            out[key] = out.get(key, 0) + int(float(match.group(2)))
    return out


def summarize(policy: str, timings: list[StreamTiming], stats: dict[str, dict[str, Any]],
              decisions: dict[str, int] | None = None) -> PolicyResult:
    ok = [t for t in timings if t.status == 200 and not t.error]
    return PolicyResult(
        policy=policy,
        ttft_ms=summarize_ms([t.ttft_s for t in ok]),
        hit_rate=cache_hit_rate(list(stats.values())),
        requests=len(ok), errors=len(timings) - len(ok),
        per_replica={rid: {"requests": s.get("requests_total", 0),
                           "hit_rate": s.get("prefix_cache", {}).get("hit_rate", 0.0)}
                     for rid, s in stats.items()},
        decisions=dict(decisions or {}),
    )
