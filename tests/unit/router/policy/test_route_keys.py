"""What the proxy reads from a request for the policy: declared needs and nothing more."""

from __future__ import annotations

from nebula_router.policy import KeyReader, Need, RouteKeys, prefix_text
from nebula_router.policy.request import need_names

BODY = {"user": "u1", "messages": [{"role": "user", "content": "hello"}]}


def test_prefix_text_chat_and_completions() -> None:
    body = {"messages": [
        {"role": "system", "content": "S"},
        {"role": "user", "content": [{"type": "text", "text": "first"}]},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": "second"},
    ]}
    text = prefix_text(body, 1000)
    assert text == "system:S\nuser:first"
    # a later turn of the same conversation has the same prefix
    body["messages"] = body["messages"][:2]
    assert prefix_text(body, 1000) == text
    assert prefix_text({"prompt": "abcdef"}, 3) == "abc"
    assert prefix_text({"prompt": ["xyz", "q"]}, 10) == "xyz"
    assert prefix_text({"input": "hello"}, 10) == "hello"
    assert prefix_text({"model": "m"}, 10) is None


def test_nothing_needed_reads_nothing() -> None:
    reader = KeyReader(Need.NONE)
    assert not (reader.session or reader.tenant or reader.priority or reader.body
                or reader.more_headers)
    keys = RouteKeys()
    reader.from_body(keys, BODY)
    assert keys == RouteKeys()


def test_prefix_only_when_needed() -> None:
    keys = RouteKeys()
    KeyReader(Need.PREFIX, prefix_chars=4).from_body(keys, BODY)
    assert keys == RouteKeys(prefix="user")


def test_user_is_a_session_key_only_without_the_header() -> None:
    reader = KeyReader(Need.SESSION | Need.SESSION_USER)
    keys = RouteKeys()
    reader.from_body(keys, BODY)
    assert keys.session == "u1"
    keys = RouteKeys(session="from-header")
    reader.from_body(keys, BODY)
    assert keys.session == "from-header"
    keys = RouteKeys()
    reader.from_body(keys, {"user": 3})
    assert keys.session is None
    keys = RouteKeys()
    KeyReader(Need.SESSION).from_body(keys, BODY)  # header-only affinity ignores `user`
    assert keys.session is None


def test_header_needs_become_flags() -> None:
    reader = KeyReader(Need.TENANT | Need.PRIORITY)
    assert reader.tenant and reader.priority and reader.more_headers
    assert not (reader.session or reader.prefix or reader.body)
    assert KeyReader(Need.SESSION_USER).body and KeyReader(Need.PREFIX).body
    assert need_names(Need.TENANT | Need.PREFIX) == ["prefix", "tenant"]
    assert need_names(Need.NONE) == []
