"""Token limits: windows, estimates, the admission rule, settlement, usage batching, and
run-time keys merged with static ones (pure logic)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from nebula_common.records import ApiKey as KeyRecord
from nebula_gateway import budget
from nebula_gateway.auth import ApiKey, Authenticator, AuthError, hash_key
from nebula_gateway.tenancy import UsageBook

T = dt.datetime(2026, 12, 31, 23, 59, 30, tzinfo=dt.UTC).timestamp()


def test_windows_are_utc_minutes_days_and_months() -> None:
    assert budget.window("minute", T) == (f"m{int(T // 60)}", (int(T // 60) + 1) * 60.0)
    day, ends = budget.window("day", T)
    assert day == "d20261231" and ends == dt.datetime(2027, 1, 1, tzinfo=dt.UTC).timestamp()
    month, ends = budget.window("month", T)
    assert month == "M202612" and ends == dt.datetime(2027, 1, 1, tzinfo=dt.UTC).timestamp()
    june, ends = budget.window("month", dt.datetime(2026, 6, 3, tzinfo=dt.UTC).timestamp())
    assert june == "M202606" and ends == dt.datetime(2026, 7, 1, tzinfo=dt.UTC).timestamp()
    with pytest.raises(ValueError):
        budget.window("year", T)


def test_counters_only_for_the_limits_a_key_has() -> None:
    assert budget.counters(ApiKey("h" * 64), T) == ()
    both = budget.counters(ApiKey("a" * 64, tpm=100, budget_tokens=1000,
                                  budget_period="day"), T)
    assert [(c.kind, c.limit, c.period) for c in both] == [
        ("tpm", 100, "minute"), ("budget", 1000, "day")]
    assert all(c.store_key.startswith("a" * 64 + ":") for c in both)
    assert both[0].code == "tokens_per_minute_exceeded"
    assert both[1].code == "token_budget_exceeded"
    # a budget without a period is no budget (the CLI refuses it; a file key cannot say it)
    assert budget.counters(ApiKey("b" * 64, budget_tokens=5), T) == ()


def test_a_shared_store_counts_the_rpm_per_utc_minute() -> None:
    key = ApiKey("c" * 64, rpm=10, tpm=100)
    assert [c.kind for c in budget.counters(key, T)] == ["tpm"]  # per gateway: auth's bucket
    per_minute, _ = budget.counters(key, T, shared_rpm=True)
    assert (per_minute.kind, per_minute.limit, per_minute.ends_at) == (
        "rpm", 10, (int(T // 60) + 1) * 60.0)
    assert per_minute.code == "rate_limit_exceeded"
    # a request counter takes one request whatever the tokens
    assert budget.admits(per_minute, 9, 0, 5000) and not budget.admits(per_minute, 10, 0, 0)
    refusal = budget.Refusal(per_minute, 10, 0, 5000)
    assert refusal.message().startswith("rate limit of 10 requests per minute reached")
    assert refusal.retry_after(T) == 30


def test_the_estimate_covers_the_prompt_and_the_most_it_may_generate() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 300}],
            "max_tokens": 50}
    raw = json.dumps(body).encode()
    prompt = len(raw) // budget.CHARS_PER_TOKEN + 1
    assert prompt > 300 // 4  # never below what a 4-characters-per-token engine counts
    assert budget.estimate("/v1/chat/completions", raw, body) == prompt + 50
    assert budget.estimate("/v1/chat/completions", raw, {**body, "n": 3}) == prompt + 150
    assert budget.estimate("/v1/responses", raw, {"max_output_tokens": 7}) == prompt + 7
    assert budget.estimate("/v1/chat/completions", raw, {}, 99) == prompt + 99
    assert budget.estimate("/v1/chat/completions", raw, {"max_tokens": True}, 99) == prompt + 99
    assert budget.estimate("/v1/embeddings", raw, body) == prompt


def test_admission_holds_the_limit_exactly() -> None:
    c = budget.Counter("budget", "k:budget:d1", 100, T)
    assert budget.admits(c, 60, 30, 10)
    assert not budget.admits(c, 60, 30, 11)
    refusal = budget.Refusal(budget.Counter("budget", "k", 100, T + 90, "day"), 60, 30, 11)
    assert "token budget of 100 tokens per day" in refusal.message()
    assert refusal.retry_after(T) == 90
    assert budget.Refusal(c, 0, 0, 1).retry_after(T + 5) == 1  # never 0


def test_charge_is_the_engines_usage_else_what_was_reserved_once_started() -> None:
    assert budget.charge(500, 12, 30, True) == 42
    assert budget.charge(500, 12, None, True) == 12
    assert budget.charge(500, None, None, True) == 500  # cut off mid-stream: spent
    assert budget.charge(500, None, None, False) == 0  # never reached an engine
    assert budget.hold_expiry(T, 600) == T + 600 + budget.HOLD_GRACE_S


def test_usage_book_batches_and_takes_back_a_failed_write() -> None:
    book = UsageBook()
    book.add("team-a", "m", 10, 5)
    book.add("team-a", "m", 1, 2)
    book.add("team-b", "m", 3, 0)
    delta = book.take()
    assert delta == {("team-a", "m"): (2, 11, 7), ("team-b", "m"): (1, 3, 0)}
    assert book.pending == {}
    book.add("team-a", "m", 1, 1)
    book.give_back(delta)
    assert book.pending[("team-a", "m")] == (3, 12, 8)


def _record(secret: str, name: str, **kwargs: object) -> KeyRecord:
    return KeyRecord(key_hash=hash_key(secret), name=name, **kwargs)  # type: ignore[arg-type]


def test_run_time_keys_merge_with_static_ones_and_win_over_them() -> None:
    static = {hash_key("file-key"): ApiKey(hash_key("file-key"), "from-file", rpm=5)}
    auth = Authenticator(static, require_keys=True)
    auth.set_records([_record("etcd-key", "team-a", tpm=1000, models=["m"])])
    assert auth.authenticate("Bearer file-key").name == "from-file"
    key = auth.authenticate("Bearer etcd-key")
    assert (key.name, key.tpm, key.models, key.counts_tokens) == (
        "team-a", 1000, frozenset({"m"}), True)
    # the same hash in etcd replaces the file's entry; revoked there, it is refused
    auth.set_records([_record("file-key", "moved", rpm=9)])
    assert auth.authenticate("Bearer file-key").rpm == 9
    with pytest.raises(AuthError) as gone:
        auth.authenticate("Bearer etcd-key")
    assert gone.value.status == 401
    auth.set_records([_record("file-key", "moved", revoked_at=1.0)])
    with pytest.raises(AuthError):
        auth.authenticate("Bearer file-key")


def test_watched_keys_mean_no_anonymous_access_even_before_the_first_key() -> None:
    auth = Authenticator({}, require_keys=True)
    assert auth.enabled
    with pytest.raises(AuthError) as missing:
        auth.authenticate(None)
    assert missing.value.code == "missing_api_key"


def test_a_changed_rpm_applies_to_the_next_request() -> None:
    now = [0.0]
    auth = Authenticator({}, clock=lambda: now[0], require_keys=True)
    auth.set_records([_record("k", "a", rpm=1)])
    auth.acquire(auth.authenticate("Bearer k"))
    with pytest.raises(AuthError):
        auth.acquire(auth.authenticate("Bearer k"))
    auth.set_records([_record("k", "a", rpm=10)])
    auth.acquire(auth.authenticate("Bearer k"))


def test_the_key_record_round_trips_and_names_itself_by_a_hash_prefix() -> None:
    record = _record("s", "n", budget_tokens=10, budget_period="day", priority="gold")
    again = KeyRecord.from_json(record.to_json())
    assert again == record and not again.revoked
    assert again.key_id == record.key_hash[:16]


def test_a_key_file_line_can_carry_token_limits() -> None:
    from nebula_gateway.auth import KeyFileError, parse_key_line
    key = parse_key_line(f"{'c' * 64} team tpm=500 budget=9000/month")
    assert key is not None and (key.tpm, key.budget_tokens, key.budget_period) == (
        500, 9000, "month")
    assert [c.kind for c in budget.counters(key, T)] == ["tpm", "budget"]
    for bad in ("budget=9000", "budget=x/day", "budget=5/year", "tpm=-1"):
        with pytest.raises(KeyFileError):
            parse_key_line(f"{'c' * 64} {bad}")
