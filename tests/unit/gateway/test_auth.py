"""API keys: hashing, key files, 401s, per-key rpm and concurrency limits, allow-lists."""

from __future__ import annotations

import pytest

from nebula_gateway.auth import (
    ApiKey,
    Authenticator,
    AuthError,
    KeyFileError,
    bearer_token,
    hash_key,
    load_keys,
    parse_key_line,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_key_file_lines() -> None:
    digest = hash_key("sk-alpha")
    key = parse_key_line(f"{digest} alpha rpm=5 concurrency=2 models=a,b/c  # team A", 1)
    assert key == ApiKey(digest, "alpha", 5, 2, frozenset({"a", "b/c"}))
    assert parse_key_line("   # only a comment") is None
    assert parse_key_line("") is None
    with pytest.raises(KeyFileError):
        parse_key_line("not-a-hash name")
    with pytest.raises(KeyFileError):
        parse_key_line(f"{digest} rpm=lots")
    with pytest.raises(KeyFileError):
        parse_key_line(f"{digest} colour=blue")


def test_plaintext_keys_are_hashed_and_label_is_never_the_key() -> None:
    keys = load_keys(None, ["sk-secret-1", " ", "sk-secret-2"])
    assert set(keys) == {hash_key("sk-secret-1"), hash_key("sk-secret-2")}
    for key in keys.values():
        assert "sk-secret" not in key.label and "sk-secret" not in repr(key.__dict__)
    assert ApiKey(hash_key("x")).label == hash_key("x")[:8]


def test_bearer_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer   abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None


def test_auth_off_without_keys_every_caller_is_the_anonymous_key() -> None:
    auth = Authenticator({})
    key = auth.authenticate(None)
    assert key is auth.authenticate("Bearer anything") and key.label == "anonymous"
    auth.acquire(key)
    auth.check_model(key, "anything")


def test_missing_and_unknown_key_are_401() -> None:
    auth = Authenticator(load_keys(None, ["sk-good"]))
    with pytest.raises(AuthError) as missing:
        auth.authenticate(None)
    assert (missing.value.status, missing.value.type) == (401, "invalid_request_error")
    with pytest.raises(AuthError) as wrong:
        auth.authenticate("Bearer sk-bad")
    assert (wrong.value.status, wrong.value.code) == (401, "invalid_api_key")
    assert auth.authenticate("Bearer sk-good") is not None


def test_rate_limit_token_bucket_with_retry_after() -> None:
    clock = Clock()
    digest = hash_key("k")
    auth = Authenticator({digest: ApiKey(digest, "k", rpm=2)}, clock=clock)
    key = auth.authenticate("Bearer k")
    for _ in range(2):
        auth.acquire(key)
        auth.release(key)
    with pytest.raises(AuthError) as caught:
        auth.acquire(key)
    assert caught.value.status == 429 and caught.value.type == "rate_limit_error"
    assert caught.value.retry_after == 30  # one token per 30 s at 2 rpm
    clock.now += 30
    auth.acquire(key)


def test_default_rpm_applies_when_key_has_none() -> None:
    digest = hash_key("k")
    auth = Authenticator({digest: ApiKey(digest)}, default_rpm=1, clock=Clock())
    key = auth.authenticate("Bearer k")
    auth.acquire(key)
    auth.release(key)
    with pytest.raises(AuthError):
        auth.acquire(key)


def test_concurrency_limit_and_release() -> None:
    digest = hash_key("k")
    auth = Authenticator({digest: ApiKey(digest, concurrency=2)})
    key = auth.authenticate("Bearer k")
    auth.acquire(key)
    auth.acquire(key)
    with pytest.raises(AuthError) as caught:
        auth.acquire(key)
    assert caught.value.status == 429 and caught.value.retry_after == 1
    auth.release(key)
    auth.acquire(key)


def test_model_allow_list() -> None:
    digest = hash_key("k")
    auth = Authenticator({digest: ApiKey(digest, models=frozenset({"a"}))})
    key = auth.authenticate("Bearer k")
    auth.check_model(key, "a")
    with pytest.raises(AuthError) as caught:
        auth.check_model(key, "b")
    assert caught.value.status == 403


def test_key_names_and_priorities_are_header_safe() -> None:
    digest = hash_key("k")
    key = parse_key_line(f"{digest} team-a priority=high", 1)
    assert key is not None and (key.label, key.priority) == ("team-a", "high")
    for bad in ("anonymous", "two\u00e9", "x" * 65):  # the anonymous tenant is nobody's name
        with pytest.raises(KeyFileError):
            parse_key_line(f"{digest} {bad}", 1)
    with pytest.raises(KeyFileError):
        parse_key_line(f"{digest} priority=a,b", 1)


def test_anonymous_limits_fall_back_to_the_defaults() -> None:
    auth = Authenticator({}, default_concurrency=1, clock=Clock())
    key = auth.authenticate(None)
    auth.acquire(key)
    with pytest.raises(AuthError) as caught:
        auth.acquire(key)
    assert caught.value.code == "concurrency_limit_exceeded"
    limited = Authenticator({}, anonymous_rpm=1, clock=Clock())
    limited.acquire(limited.authenticate(None))
    with pytest.raises(AuthError):
        limited.acquire(limited.authenticate(None))
