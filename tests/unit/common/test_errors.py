"""nebula_common.errors: how an exception reads."""

from __future__ import annotations

from nebula_common.errors import error_text


def test_error_text_is_the_message_or_the_type_of_a_silent_exception() -> None:
    assert error_text(ConnectionError("refused")) == "refused"
    assert error_text(TimeoutError()) == "TimeoutError"
