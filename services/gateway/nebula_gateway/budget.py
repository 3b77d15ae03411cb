"""Token limits per key (tokens per minute, a budget per day or month): pure, no IO.

At admission a request reserves what it may cost at most: its prompt, estimated cheaply
from the body's size (one token per :data:`CHARS_PER_TOKEN` bytes of JSON, which counts the
text and then some), plus its ``max_tokens`` (or the gateway's default for the model). The
reservation is held on every counter of the key (the current minute, the current budget
period) only if each stays within its limit with it; when the request ends it is settled:
the hold goes, the engine's reported usage is added. A request that never reached an engine
costs nothing; one cut off after it started (a disconnect, a broken stream) without usage
costs its reservation. Holds expire (a gateway that died mid-request leaks nothing for
longer than :func:`hold_expiry` says). The state backends (:mod:`.state`) apply these rules
atomically; this module decides the numbers.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

from .auth import ApiKey

CHARS_PER_TOKEN = 3
"""Bytes of request JSON counted as one prompt token (tokenizers average about four
characters of English per token: three leaves room for JSON and shorter words)."""
DEFAULT_MAX_TOKENS = 1024
"""Completion tokens reserved for a request that names no ``max_tokens``
(``--default-max-tokens``)."""
HOLD_GRACE_S = 60.0
"""How long past the request timeout a hold is kept before it is treated as leaked."""

GENERATING = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses",
                        "/v1/messages"})
"""Endpoints that generate tokens: they reserve their prompt and their most output."""
COUNTED = GENERATING | {"/v1/embeddings"}
"""Endpoints whose tokens count against a key's limits (tokenizing, counting: not)."""

TPM = "tpm"
BUDGET = "budget"
RPM = "rpm"
"""Requests per minute on a shared store: counted at admission (one), never held."""
_CODES = {TPM: "tokens_per_minute_exceeded", BUDGET: "token_budget_exceeded",
          RPM: "rate_limit_exceeded"}
_MAX_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


@dataclass(frozen=True, slots=True)
class Counter:
    """One limit of one key in one window: ``store_key`` names its row in the state store."""

    kind: str
    """:data:`TPM`, :data:`BUDGET` or :data:`RPM`."""
    store_key: str
    limit: int
    ends_at: float
    """When the window closes (epoch seconds): the counter is dropped after it."""
    period: str = "minute"

    @property
    def code(self) -> str:
        return _CODES[self.kind]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a reservation was refused: the counter, what it held, and when it frees up."""

    counter: Counter
    used: int
    reserved: int
    amount: int

    def message(self) -> str:
        c = self.counter
        if c.kind == RPM:
            return (f"rate limit of {c.limit} requests per minute reached for this key "
                    f"(counted across every gateway): {self.used} this minute")
        what = (f"token limit of {c.limit} tokens per minute" if c.kind == TPM
                else f"token budget of {c.limit} tokens per {c.period}")
        return (f"{what} reached for this key: {self.used} used and {self.reserved} reserved; "
                f"this request needs up to {self.amount}")

    def retry_after(self, now: float) -> int:
        return max(1, math.ceil(self.counter.ends_at - now))


_CALENDAR: dict[str, tuple[float, float, str]] = {}
"""The current day and month windows: (start, end, id) by period (the hot path reuses them)."""


def window(period: str, now: float) -> tuple[str, float]:
    """The id of the window of ``period`` (minute, day, month; UTC) holding ``now``, and
    when it ends."""
    if period == "minute":
        n = int(now // 60)
        return f"m{n}", (n + 1) * 60.0
    cached = _CALENDAR.get(period)
    if cached is not None and cached[0] <= now < cached[1]:
        return cached[2], cached[1]
    t = dt.datetime.fromtimestamp(now, dt.UTC)
    if period == "day":
        start = dt.datetime(t.year, t.month, t.day, tzinfo=dt.UTC)
        wid, end = f"d{start:%Y%m%d}", (start + dt.timedelta(days=1)).timestamp()
    elif period == "month":
        start = dt.datetime(t.year, t.month, 1, tzinfo=dt.UTC)
        nxt = dt.datetime(t.year + t.month // 12, t.month % 12 + 1, 1, tzinfo=dt.UTC)
        wid, end = f"M{t:%Y%m}", nxt.timestamp()
    else:
        raise ValueError(f"unknown budget period {period!r}")
    _CALENDAR[period] = (start.timestamp(), end, wid)
    return wid, end


def counters(key: ApiKey, now: float, *, shared_rpm: bool = False) -> tuple[Counter, ...]:
    """The counters a request of ``key`` reserves on now (none: it counts no tokens);
    with ``shared_rpm`` its rpm too (one request per minute window, on a shared store)."""
    out: list[Counter] = []
    if shared_rpm and key.rpm:
        wid, ends = window("minute", now)
        out.append(Counter(RPM, f"{key.key_hash}:{RPM}:{wid}", key.rpm, ends))
    if key.tpm:
        wid, ends = window("minute", now)
        out.append(Counter(TPM, f"{key.key_hash}:{TPM}:{wid}", key.tpm, ends))
    if key.budget_tokens and key.budget_period:
        wid, ends = window(key.budget_period, now)
        out.append(Counter(BUDGET, f"{key.key_hash}:{BUDGET}:{wid}", key.budget_tokens, ends,
                           key.budget_period))
    return tuple(out)


def estimate(endpoint: str, raw: bytes, body: dict[str, Any],
             default_max_tokens: int = DEFAULT_MAX_TOKENS) -> int:
    """The most tokens a request may cost: its prompt (estimated) and its completion."""
    prompt = len(raw) // CHARS_PER_TOKEN + 1
    if endpoint not in GENERATING:
        return prompt
    for name in _MAX_FIELDS:
        value = body.get(name)
        if type(value) is int and value > 0:
            return prompt + value * max(1, _choices(body))
    return prompt + default_max_tokens * max(1, _choices(body))


def _choices(body: dict[str, Any]) -> int:
    n = body.get("n")
    return n if type(n) is int and n > 0 else 1


def admits(counter: Counter, used: int, reserved: int, amount: int) -> bool:
    """May ``amount`` more be reserved on ``counter``? (The one rule every backend applies:
    a request counter takes one request, whatever the tokens.)"""
    return used + reserved + (1 if counter.kind == RPM else amount) <= counter.limit


def charge(reserved: int, prompt_tokens: int | None, completion_tokens: int | None,
           started: bool) -> int:
    """What a finished request costs: the engine's usage, else its reservation when the
    engine had started on it (cut off: the tokens were spent), else nothing."""
    if prompt_tokens is not None:
        return max(0, prompt_tokens) + max(0, completion_tokens or 0)
    return reserved if started else 0


def hold_expiry(now: float, request_timeout: float) -> float:
    """When a hold taken now is dropped if it was never settled (its gateway died)."""
    return now + request_timeout + HOLD_GRACE_S
