"""The Batch API's pure parts: line validation, result lines, the batch's statuses."""

from __future__ import annotations

import json

import pytest

from nebula_gateway import batches_lines as bl
from nebula_gateway.batches import parse_create
from nebula_gateway.files import page
from nebula_gateway.validation import ValidationError

CHAT = "/v1/chat/completions"


def line(custom_id: str, url: str = CHAT, method: str = "POST", body: object = None) -> str:
    return json.dumps({"custom_id": custom_id, "method": method, "url": url,
                       "body": {"model": "m", "messages": []} if body is None else body})


def content(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def test_valid_lines_keep_their_order_and_bodies() -> None:
    lines, errors = bl.validate_lines(content(line("a"), "", line("b")), CHAT)
    assert errors == []
    assert [(x.index, x.custom_id) for x in lines] == [(0, "a"), (1, "b")]
    assert lines[0].body == {"model": "m", "messages": []}


@pytest.mark.parametrize(("raw", "code", "param"), [
    ("{not json", "invalid_json_line", None),
    ("[1, 2]", "invalid_json_line", None),
    (json.dumps({"method": "POST", "url": CHAT, "body": {}}), "missing_required_parameter",
     "custom_id"),
    (line("x", method="GET"), "invalid_method", "method"),
    (line("x", url="/v1/embeddings"), "mismatched_endpoint", "url"),
    (line("x", body=[1]), "invalid_request", "body"),
    (line("x", body={"model": "m", "stream": True}), "invalid_request", "body.stream"),
])
def test_each_kind_of_bad_line_is_reported_with_its_line_number(raw: str, code: str,
                                                                param: str | None) -> None:
    _, errors = bl.validate_lines(content(line("ok"), raw), CHAT)
    assert errors == [{"code": code, "message": errors[0]["message"], "param": param,
                       "line": 2}]


def test_duplicate_custom_ids_are_refused() -> None:
    _, errors = bl.validate_lines(content(line("a"), line("b"), line("a")), CHAT)
    assert [(e["code"], e["line"]) for e in errors] == [("duplicate_custom_id", 3)]


def test_empty_and_non_utf8_files_fail() -> None:
    assert bl.validate_lines(b"\n\n", CHAT)[1][0]["code"] == "empty_file"
    assert bl.validate_lines(b"\xff\xfe", CHAT)[1][0]["code"] == "invalid_file"


def test_result_line_is_openais_shape() -> None:
    got = json.loads(bl.result_line("c1", 200, "req-1", b'{"id": "chatcmpl-1"}'))
    assert got["id"].startswith("batch_req_")
    assert got == {"id": got["id"], "custom_id": "c1", "error": None,
                   "response": {"status_code": 200, "request_id": "req-1",
                                "body": {"id": "chatcmpl-1"}}}
    broken = json.loads(bl.result_line("c2", 502, "req-2", b"<html>"))
    assert broken["response"]["body"]["error"]["message"] == "<html>"
    failed = json.loads(bl.failed_line("c3", "batch_expired", "too late"))
    assert failed["response"] is None and failed["error"]["code"] == "batch_expired"


def test_assemble_splits_by_outcome_in_input_order() -> None:
    out, err = bl.assemble({2: (True, b"c"), 0: (True, b"a"), 1: (False, b"b")})
    assert (out, err) == (b"a\nc\n", b"b\n")
    assert bl.assemble({}) == (b"", b"")


def test_statuses_move_only_forward() -> None:
    batch = bl.new_batch("batch_1", CHAT, "file-1", "24h", None, 100)
    assert batch["status"] == "validating" and batch["expires_at"] == 100 + 24 * 3600
    running = bl.transition(batch, bl.IN_PROGRESS, 101)
    assert (running["status"], running["in_progress_at"]) == ("in_progress", 101)
    done = bl.transition(bl.transition(running, bl.FINALIZING, 102), bl.COMPLETED, 103)
    assert (done["finalizing_at"], done["completed_at"]) == (102, 103)
    with pytest.raises(bl.TransitionError):
        bl.transition(done, bl.CANCELLING, 104)
    with pytest.raises(bl.TransitionError):
        bl.transition(batch, bl.COMPLETED, 104)
    assert bl.transition(batch, bl.FAILED, 101)["failed_at"] == 101
    stopped = bl.transition(bl.transition(running, bl.CANCELLING, 105), bl.CANCELLED, 106)
    assert (stopped["cancelling_at"], stopped["cancelled_at"]) == (105, 106)


def test_present_shows_live_counts_and_an_asked_cancel() -> None:
    running = bl.transition(bl.new_batch("b", CHAT, "f", "24h", {"a": "1"}, 1),
                            bl.IN_PROGRESS, 2)
    running["request_counts"]["total"] = 10
    shown = bl.present(running, (3, 1), 5)
    assert shown["request_counts"] == {"total": 10, "completed": 3, "failed": 1}
    assert (shown["status"], shown["cancelling_at"]) == ("cancelling", 5)
    assert running["status"] == "in_progress"  # (not changed in place)
    done = bl.transition(bl.transition(running, bl.FINALIZING, 3), bl.COMPLETED, 4)
    assert bl.present(done, (9, 9), 5)["status"] == "completed"


def test_create_body_is_checked() -> None:
    ok = json.dumps({"input_file_id": "file-1", "endpoint": CHAT,
                     "completion_window": "24h", "metadata": {"k": "v"}}).encode()
    assert parse_create(ok) == ("file-1", CHAT, "24h", {"k": "v"})
    for bad in ({"endpoint": CHAT, "completion_window": "24h"},
                {"input_file_id": "f", "endpoint": "/v1/other", "completion_window": "24h"},
                {"input_file_id": "f", "endpoint": CHAT, "completion_window": "1h"},
                {"input_file_id": "f", "endpoint": CHAT, "completion_window": "24h",
                 "metadata": {"k": 1}}):
        with pytest.raises(ValidationError) as info:
            parse_create(json.dumps(bad).encode())
        assert info.value.status == 400
    with pytest.raises(ValidationError):
        parse_create(b"{")


def test_pages_follow_the_cursor() -> None:
    items = [{"id": f"x{i}"} for i in range(5, 0, -1)]  # newest first
    first = page(items, 2, "desc", None)
    assert [i["id"] for i in first["data"]] == ["x5", "x4"] and first["has_more"]
    last = page(items, 2, "desc", "x2")
    assert [i["id"] for i in last["data"]] == ["x1"] and not last["has_more"]
    assert [i["id"] for i in page(items, 2, "asc", None)["data"]] == ["x1", "x2"]


def test_an_expired_batch_lists_its_unfinished_lines_as_batch_expired() -> None:
    batch = bl.new_batch("b", CHAT, "f", "24h", None, 100, window_s=5)
    assert batch["expires_at"] == 105
    expired = bl.transition(bl.transition(batch, bl.IN_PROGRESS, 101), bl.EXPIRED, 106)
    assert (expired["status"], expired["expired_at"]) == ("expired", 106)
    assert bl.transition(batch, bl.EXPIRED, 200)["status"] == "expired"  # never started
    lines = [bl.Line(i, f"c{i}", {}) for i in range(3)]
    left = bl.expired_lines(lines, {1: (True, b"done")})
    assert sorted(left) == [0, 2] and not any(ok for ok, _ in left.values())
    shown = json.loads(left[2][1])
    assert shown["custom_id"] == "c2" and shown["response"] is None
    assert shown["error"] == {"code": "batch_expired", "message": bl.EXPIRED_MESSAGE}
