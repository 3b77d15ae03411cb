"""Log lines are JSON and never carry secrets."""

import json
import logging

from nebula_common.logs import JsonFormatter, scrub


def test_scrub_hides_bearer_tokens_and_keys() -> None:
    line = scrub('Authorization: Bearer sk-secret-123 api_key="abc" ok')
    assert "sk-secret-123" not in line and "abc" not in line and "ok" in line


def test_json_formatter_includes_extra_fields() -> None:
    record = logging.makeLogRecord({"msg": "hello %s", "args": ("x",), "levelname": "INFO",
                                    "name": "t", "request_id": "r1"})
    entry = json.loads(JsonFormatter("router").format(record))
    assert entry["msg"] == "hello x" and entry["request_id"] == "r1"
    assert entry["service"] == "router"
