"""Files' ``expires_after``: the multipart fields the SDKs send, checked; a file past its
``expires_at`` is gone from retrieve, content and list (on real SQLite and redis)."""

from __future__ import annotations

import json

import pytest

from nebula_gateway.files import CONTENT, FILE, UPLOAD_KEPT_S, Files, expires_after
from nebula_gateway.state import GatewayState
from nebula_gateway.validation import ValidationError
from tests.unit.gateway.test_state import redis_server, state  # noqa: F401


def test_expires_after_is_read_from_the_multipart_fields() -> None:
    assert expires_after({}) == UPLOAD_KEPT_S
    assert expires_after({"expires_after[anchor]": "created_at",
                          "expires_after[seconds]": "3600"}) == 3600
    for bad, param in (({"expires_after[anchor]": "now", "expires_after[seconds]": "3600"},
                        "expires_after.anchor"),
                       ({"expires_after[anchor]": "created_at",
                         "expires_after[seconds]": "59"}, "expires_after.seconds"),
                       ({"expires_after[anchor]": "created_at"}, "expires_after.seconds")):
        with pytest.raises(ValidationError) as err:
            expires_after(bad)
        assert err.value.status == 400 and err.value.param == param


async def test_an_expired_file_is_gone(state: GatewayState) -> None:  # noqa: F811
    files = Files(state)
    kept = await files.create("alice", "a.jsonl", "batch", b"x\n", 3600)
    assert kept["expires_at"] == kept["created_at"] + 3600
    gone = await files.create("alice", "b.jsonl", "batch", b"y\n", 3600)
    past = {**gone, "expires_at": gone["created_at"] - 1}  # as if an hour had passed
    await state.put_record(FILE, gone["id"], "alice", json.dumps(past).encode(), 1.0)
    assert [f["id"] for f in await files.listing("alice")] == [kept["id"]]
    assert await files.meta("alice", gone["id"]) is None
    assert await files.content("alice", gone["id"]) is None
    assert await state.get_record(CONTENT, gone["id"]) is None  # dropped, not just hidden
    assert await files.content("alice", kept["id"]) == b"x\n"
