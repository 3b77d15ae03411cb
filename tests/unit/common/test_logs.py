"""Log lines are JSON and never carry secrets."""

import json
import logging

import pytest

from nebula_common.logs import JsonFormatter, TextFormatter, redact_argv, scrub


def test_scrub_hides_bearer_tokens_and_keys() -> None:
    line = scrub('Authorization: Bearer sk-secret-123 api_key="abc" ok')
    assert "sk-secret-123" not in line and "abc" not in line and "ok" in line


def test_json_formatter_includes_extra_fields() -> None:
    record = logging.makeLogRecord({"msg": "hello %s", "args": ("x",), "levelname": "INFO",
                                    "name": "t", "request_id": "r1"})
    entry = json.loads(JsonFormatter("router").format(record))
    assert entry["msg"] == "hello x" and entry["request_id"] == "r1"
    assert entry["service"] == "router"


def formatted(fmt: logging.Formatter, **extra: object) -> str:
    record = logging.makeLogRecord({"msg": "m", "levelname": "INFO", "name": "t", **extra})
    return fmt.format(record)


SECRET = "sk-live-3f9a0c1e7b5d2468"


@pytest.mark.parametrize("fmt", [JsonFormatter("node"), TextFormatter("node")])
def test_secret_extra_fields_are_hidden_whatever_the_format(fmt: logging.Formatter) -> None:
    line = formatted(fmt, api_key=SECRET, authorization=f"Bearer {SECRET}", password=SECRET,
                     hf_token=SECRET, client_secret=SECRET, x_api_key=SECRET,
                     headers={"Authorization": f"Bearer {SECRET}", "accept": "*/*"},
                     note=f"retrying with Bearer {SECRET}", env={"HF_TOKEN": SECRET},
                     argv=["--api-key", SECRET])
    assert SECRET not in line and "[redacted]" in line and "*/*" in line


def test_only_secret_names_are_hidden_counts_and_labels_stay() -> None:
    entry = json.loads(formatted(JsonFormatter("gateway"), prompt_tokens=12, max_tokens=5,
                                 key="team-a", model="Org/Model", api_key=SECRET,
                                 trace_id="0af7651916cd43dd8448eb211c80319c"))
    assert entry["api_key"] == "[redacted]"
    assert (entry["prompt_tokens"], entry["max_tokens"], entry["key"], entry["model"]) == (
        12, 5, "team-a", "Org/Model")
    assert entry["trace_id"] == "0af7651916cd43dd8448eb211c80319c"


def test_json_formatter_scrubs_values_it_prints_with_str() -> None:
    class Opaque:
        def __str__(self) -> str:
            return f"token={SECRET}"

    assert SECRET not in formatted(JsonFormatter("node"), thing=Opaque())


@pytest.mark.parametrize(("argv", "shown"), [
    (["vllm", "serve", "m", "--api-key", SECRET], "vllm serve m --api-key [redacted]"),
    (["vllm", "--api-key=" + SECRET, "--seed", "1"], "vllm --api-key=[redacted] --seed 1"),
    (["llama", "--api_key", SECRET, "--hf-token", "hf_" + "a" * 30],
     "llama --api_key [redacted] --hf-token [redacted]"),
    (["sim", "--max-tokens", "5", "--output-tokens", "3"], "sim --max-tokens 5 --output-tokens 3"),
])
def test_redact_argv_hides_secret_flag_values(argv: list[str], shown: str) -> None:
    assert " ".join(redact_argv(argv)) == shown


def test_scrub_hides_hugging_face_tokens_and_secret_assignments() -> None:
    token = "hf_" + "Ab1" * 12
    line = scrub(f"HF_TOKEN={token} url=https://x/?token={SECRET}&page=2 password={SECRET}")
    assert token not in line and SECRET not in line and "page=2" in line


def test_batched_handler_writes_access_lines_together() -> None:
    import asyncio
    import io
    import logging

    from nebula_common.logs import BatchedHandler

    stream = io.StringIO()
    handler = BatchedHandler(stream, interval=0.05, max_lines=3)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("test.batched")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)

    async def run() -> list[str]:
        seen = []
        log.info("a")
        log.info("b")
        seen.append(stream.getvalue())  # held: one write later for both
        await asyncio.sleep(0.15)
        seen.append(stream.getvalue())
        for word in ("c", "d", "e"):  # the third line fills the batch: written at once
            log.info(word)
        seen.append(stream.getvalue())
        log.info("f")
        return seen

    held, timed, full = asyncio.run(run())
    assert held == "" and timed == "a\nb\n" and full == "a\nb\nc\nd\ne\n"
    log.info("g")  # outside a loop: written as it comes, and "f" with it
    assert stream.getvalue().endswith("e\nf\ng\n")


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_access_log_fast_line_is_the_record_line(fmt: str) -> None:
    import io
    import logging

    from nebula_common.logs import AccessLog, BatchedHandler

    fields = {"request_id": "r1", "status": 200, "latency_ms": 1.5, "ttft_ms": None,
              "api_key": SECRET, "note": f"Bearer {SECRET}", "replicas": ["a", "b"]}
    formatter = JsonFormatter("router") if fmt == "json" else TextFormatter("router")
    lines = []
    for fast in (True, False):
        stream = io.StringIO()
        handler = BatchedHandler(stream)
        handler.setFormatter(formatter)
        log = logging.getLogger(f"test.access.{fmt}")
        log.handlers[:] = [handler]
        log.propagate = False
        log.setLevel(logging.INFO)
        if fast:
            AccessLog(log.name).write(dict(fields))
        else:
            log.info("request", extra=dict(fields))
        handler.flush()
        lines.append(stream.getvalue())
    fast_line, record_line = lines
    assert SECRET not in fast_line
    if fmt == "json":
        a, b = json.loads(fast_line), json.loads(record_line)
        assert abs(a.pop("ts") - b.pop("ts")) < 1 and a == b
    else:
        assert fast_line[8:] == record_line[8:]  # past the HH:MM:SS stamp


def test_access_log_goes_through_logging_when_captured(caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    from nebula_common.logs import AccessLog

    with caplog.at_level("INFO", logger="test.access.captured"):
        AccessLog("test.access.captured").write({"status": 201})
    assert [(r.getMessage(), getattr(r, "status", None)) for r in caplog.records] == [
        ("request", 201)]


def test_remembered_scrubs_never_keep_or_show_a_secret() -> None:
    from nebula_common import logs

    for _ in range(2):  # the second time from what the first remembered
        out = logs.scrubbed_fields({"model": "org/model-1", "note": f"token={SECRET}",
                                    "argv": ["--api-key", SECRET], "replicas": ["n-1/r0"]})
        assert out == {"model": "org/model-1", "note": "token=[redacted]",
                       "argv": ["--api-key", "[redacted]"], "replicas": ["n-1/r0"]}
    assert "org/model-1" in logs._scrubbed
    assert not any(SECRET in text for text in logs._scrubbed)


def test_json_line_is_the_plain_dump_with_or_without_the_cached_head() -> None:
    formatter = JsonFormatter("router")
    for fields in ({"status": 200, "latency_ms": 1.25, "replicas": ["r0"]}, {},
                   {"msg": "a field named like the head", "status": 500}):
        for _ in range(2):
            line = formatter.format_fields(1700000000.1234, "INFO", "nebula.x", "request",
                                           dict(fields))
            assert json.loads(line) == {"ts": 1700000000.123, "level": "info",
                                        "service": "router", "logger": "nebula.x",
                                        "msg": "request", **fields}


def test_an_access_line_that_cannot_be_formatted_loses_no_other_line() -> None:
    """Access lines are formatted with their batch: one bad value costs its own line only."""
    import io
    import logging

    from nebula_common.logs import AccessLog, BatchedHandler

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError(f"no text for Bearer {SECRET}")

    stream = io.StringIO()
    handler = BatchedHandler(stream)
    handler.setFormatter(JsonFormatter("router"))
    log = logging.getLogger("test.access.unprintable")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    access = AccessLog(log.name)
    access.write({"request_id": "r1", "status": 200})
    access.write({"request_id": "r2", "odd": Unprintable()})
    access.write({"request_id": "r3", "status": 500})
    handler.flush()
    first, bad, last = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (first["request_id"], first["status"], last["request_id"]) == ("r1", 200, "r3")
    assert bad["level"] == "error" and bad["msg"] == "access line not formatted"
    assert "RuntimeError" in bad["error"] and SECRET not in stream.getvalue()
