"""Tokenizer, text generator and output planning of the sim engine."""

from __future__ import annotations

from nebula_node.sim.tokens import VOCAB, count_tokens, generate_tokens, plan_output


def test_count_tokens_is_four_chars_rounded_up() -> None:
    assert count_tokens("") == 0
    assert count_tokens("abc") == 1
    assert count_tokens("abcd") == 1
    assert count_tokens("abcde") == 2
    assert count_tokens("x" * 64) == 16


def test_generation_is_deterministic_and_prompt_dependent() -> None:
    a = generate_tokens("hello there", 12)
    assert a == generate_tokens("hello there", 12)
    assert len(a) == 12 and all(t in VOCAB for t in a)
    assert a != generate_tokens("something else entirely", 12)
    # A longer generation starts with the shorter one (streams and non-streams agree).
    assert generate_tokens("hello there", 20)[:12] == a
    assert generate_tokens("p", 0) == []


def test_plan_output_default_stops_and_limit_is_length() -> None:
    assert plan_output(None, 16, 10, 1000) == (16, "stop")
    assert plan_output(5, 16, 10, 1000) == (5, "length")
    assert plan_output(64, 16, 10, 1000) == (64, "length")


def test_plan_output_is_capped_by_the_context_window() -> None:
    assert plan_output(None, 16, 95, 100) == (5, "length")
    assert plan_output(50, 16, 90, 100) == (10, "length")
    assert plan_output(None, 16, 100, 100) == (0, "length")
