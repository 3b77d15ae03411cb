"""API keys, per-key rate and concurrency limits: pure logic, no IO.

Keys are held only as SHA-256 hashes; the plaintext is never stored or
logged. A key's public label (metrics, logs, the router's tenant) is its
configured name or a short prefix of its hash. Without keys every caller is
the one :data:`ANONYMOUS` key, under the anonymous limits.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from nebula_common.records import BUDGET_PERIODS
from nebula_common.records import ApiKey as KeyRecord

ANONYMOUS = "anonymous"
"""The label (and tenant) of every caller when the gateway has no keys."""

_LABEL = re.compile(r"^[A-Za-z0-9._:@-]{1,64}$")
"""Key names and priorities travel in headers (x-nebula-tenant, x-nebula-priority)."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class ApiKey:
    """One configured key: its hash, label and limits (0 = use the default).

    ``priority`` ("" = none) is handed to the router's policy as ``x-nebula-priority``.
    ``tpm`` and ``budget_tokens`` per ``budget_period`` are token limits (:mod:`.budget`).
    """

    key_hash: str
    name: str = ""
    rpm: int = 0
    concurrency: int = 0
    models: frozenset[str] = field(default_factory=frozenset)
    priority: str = ""
    tpm: int = 0
    budget_tokens: int = 0
    budget_period: str = ""

    @property
    def counts_tokens(self) -> bool:
        """Does a request of this key reserve tokens at admission?"""
        return bool(self.tpm or (self.budget_tokens and self.budget_period))

    @property
    def label(self) -> str:
        return self.name or self.key_hash[:8]

    def allows(self, model: str) -> bool:
        return not self.models or model in self.models


class KeyFileError(ValueError):
    pass


def from_record(record: KeyRecord) -> ApiKey:
    """A run-time key (``nebula keys``, from etcd) as the gateway holds it."""
    return ApiKey(record.key_hash, record.name, record.rpm, record.concurrency,
                  frozenset(record.models), record.priority, record.tpm,
                  record.budget_tokens, record.budget_period)


def parse_key_line(line: str, lineno: int = 0) -> ApiKey | None:
    """``<sha256> [name] [rpm=N] [concurrency=N] [tpm=N] [budget=N/day|month] [models=a,b]
    [priority=P]``; blank/# lines -> None."""
    line = line.split("#", 1)[0].strip()
    if not line:
        return None
    fields = line.split()
    key_hash = fields[0].lower()
    if len(key_hash) != 64 or any(c not in "0123456789abcdef" for c in key_hash):
        raise KeyFileError(f"line {lineno}: the first field must be a sha256 hex digest")
    key = ApiKey(key_hash)
    for item in fields[1:]:
        name, sep, value = item.partition("=")
        if not sep:
            if not _LABEL.match(item) or item == ANONYMOUS:
                raise KeyFileError(f"line {lineno}: a key name is 1-64 of A-Z a-z 0-9 . _ : @ -"
                                   f" and not {ANONYMOUS!r}")
            key.name = item
        elif name == "budget":
            tokens, _, period = value.partition("/")
            if not tokens.isdigit() or period not in BUDGET_PERIODS:
                raise KeyFileError(f"line {lineno}: budget is N/day or N/month")
            key.budget_tokens, key.budget_period = int(tokens), period
        elif name in ("rpm", "concurrency", "tpm"):
            if not value.isdigit():
                raise KeyFileError(f"line {lineno}: {name} must be a whole number")
            setattr(key, name, int(value))
        elif name == "models":
            key.models = frozenset(m for m in value.split(",") if m)
        elif name == "priority":
            if not _LABEL.match(value):
                raise KeyFileError(f"line {lineno}: priority is 1-64 of A-Z a-z 0-9 . _ : @ -")
            key.priority = value
        else:
            raise KeyFileError(f"line {lineno}: unknown field {name!r}")
    return key


def load_keys(file_text: str | None, plaintext: Iterable[str]) -> dict[str, ApiKey]:
    """Keys from a key file's text and plaintext keys (hashed here), by hash."""
    keys: dict[str, ApiKey] = {}
    for lineno, line in enumerate((file_text or "").splitlines(), 1):
        key = parse_key_line(line, lineno)
        if key is not None:
            keys[key.key_hash] = key
    for i, raw in enumerate(k.strip() for k in plaintext):
        if raw:
            digest = hash_key(raw)
            keys.setdefault(digest, ApiKey(digest, name=f"env{i}"))
    return keys


class AuthError(Exception):
    def __init__(self, status: int, message: str, code: str, type: str,
                 retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.type = type
        self.retry_after = retry_after


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class TokenBucket:
    """``rpm`` requests per minute, refilled continuously, burst up to ``rpm``."""

    def __init__(self, rpm: int, clock: Callable[[], float] = time.monotonic):
        self.rate = rpm / 60.0
        self.capacity = float(rpm)
        self.tokens = float(rpm)
        self.clock = clock
        self.updated = clock()

    def take(self) -> float:
        """0 if a request may go now, else the seconds to wait."""
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class Authenticator:
    """Looks keys up and enforces their limits.

    With no keys every caller is the one anonymous key, limited by the anonymous
    rpm and concurrency (0 falls back to the defaults, as for any key).
    """

    def __init__(self, keys: dict[str, ApiKey], default_rpm: int = 0,
                 default_concurrency: int = 0, clock: Callable[[], float] = time.monotonic,
                 *, anonymous_rpm: int = 0, anonymous_concurrency: int = 0,
                 require_keys: bool = False):
        self.static = dict(keys)
        """Keys from the key file and NEBULA_API_KEYS, fixed at start."""
        self.keys = keys
        """What is accepted now: the static keys merged with the run-time ones."""
        self.require_keys = require_keys
        """Keys are watched (--watch-keys): no anonymous access even before the first key."""
        self.default_rpm = default_rpm
        self.default_concurrency = default_concurrency
        self.clock = clock
        self.anonymous = ApiKey(ANONYMOUS, ANONYMOUS, anonymous_rpm, anonymous_concurrency)
        self._buckets: dict[str, TokenBucket] = {}
        self._in_flight: dict[str, int] = {}

    @property
    def enabled(self) -> bool:
        return self.require_keys or bool(self.keys)

    def set_records(self, records: Iterable[KeyRecord]) -> None:
        """Apply the run-time keys (the whole current set, from the etcd watch).

        A run-time record wins over a static key of the same hash, its revocation
        included: etcd holds the operator's latest word, the file only the first one.
        """
        merged = dict(self.static)
        for record in records:
            if record.revoked:
                merged.pop(record.key_hash, None)
            else:
                merged[record.key_hash] = from_record(record)
        self.keys = merged

    def authenticate(self, authorization: str | None, api_key: str | None = None) -> ApiKey:
        """The caller's key (the anonymous one when auth is off); raises 401 otherwise.

        The key is a bearer token in ``Authorization`` or, as Anthropic's clients send
        it, the ``x-api-key`` header (``api_key``).
        """
        if not self.enabled:
            return self.anonymous
        token = bearer_token(authorization) or (api_key or "").strip() or None
        if token is None:
            raise AuthError(401, "You didn't provide an API key. Provide it in the "
                            "Authorization header as 'Bearer YOUR_KEY'.",
                            "missing_api_key", "invalid_request_error")
        digest = hash_key(token)
        key = self.keys.get(digest)
        # compare_digest: the dict lookup already matched; this keeps the check explicit
        if key is None or not hmac.compare_digest(key.key_hash, digest):
            raise AuthError(401, "Incorrect API key provided.", "invalid_api_key",
                            "invalid_request_error")
        return key

    def check_model(self, key: ApiKey | None, model: str) -> None:
        if key is not None and not key.allows(model):
            raise AuthError(403, f"this API key may not use model {model!r}",
                            "model_not_allowed", "permission_error")

    def acquire(self, key: ApiKey | None) -> None:
        """Take a rate token and a concurrency slot, or raise 429 with Retry-After."""
        if key is None:
            return
        limit = key.concurrency or self.default_concurrency
        if limit and self._in_flight.get(key.key_hash, 0) >= limit:
            raise AuthError(429, f"too many concurrent requests for this key (limit {limit})",
                            "concurrency_limit_exceeded", "rate_limit_error", retry_after=1)
        rpm = key.rpm or self.default_rpm
        if rpm:
            bucket = self._buckets.get(key.key_hash)
            if bucket is None or bucket.capacity != rpm:  # new, or its rpm was changed
                bucket = self._buckets[key.key_hash] = TokenBucket(rpm, self.clock)
            wait = bucket.take()
            if wait > 0:
                raise AuthError(429, f"rate limit of {rpm} requests per minute reached "
                                "for this key", "rate_limit_exceeded", "rate_limit_error",
                                retry_after=max(1, math.ceil(wait)))
        if limit:  # (counted only where a limit reads the count)
            self._in_flight[key.key_hash] = self._in_flight.get(key.key_hash, 0) + 1

    def release(self, key: ApiKey | None) -> None:
        if key is None or not (key.concurrency or self.default_concurrency):
            return
        left = self._in_flight.get(key.key_hash, 0) - 1
        if left > 0:
            self._in_flight[key.key_hash] = left
        else:
            self._in_flight.pop(key.key_hash, None)
