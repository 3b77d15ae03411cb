"""The three stream handlers over the one frame iterator, fed chunks cut anywhere."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from opentelemetry import trace

from nebula_gateway.app import create_app
from nebula_gateway.auth import Authenticator
from nebula_gateway.config import GatewayConfig
from nebula_gateway.outcome import Outcome
from nebula_gateway.passthrough import pass_frames
from nebula_gateway.responses import native_frames, translated_frames
from nebula_gateway.sse import frame_data, frames_of, sse_blocks, tail_of
from nebula_gateway.state import ResponseLimits
from nebula_gateway.state.sqlite import SqliteState


class Upstream:
    """What the handlers read of an upstream response: ``iter_any()`` or ``readany()``
    (b"" at the end; each chunk offered to ``take`` first, as the real one offers each read
    that is not the body's last)."""

    def __init__(self, data: bytes, size: int):
        self.chunks = [data[i:i + size] for i in range(0, len(data), size)]

    async def iter_any(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk

    async def readany(self, take: Callable[[bytes], bool] | None = None) -> bytes:
        while take is not None and len(self.chunks) > 1 and take(self.chunks[0]):
            self.chunks.pop(0)
        return self.chunks.pop(0) if self.chunks else b""


def upstream(data: bytes, size: int) -> Any:
    """The stand-in, typed as what it stands in for (an http_client Response)."""
    return Upstream(data, size)


def frame(payload: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return head + b"data: " + data + b"\n\n"


def outcome() -> Outcome:
    return Outcome(Authenticator({}, 0, 0), False, "/v1/chat/completions", "POST", "r",
                   trace.INVALID_SPAN, None)


async def collect(stream: AsyncIterator[bytes]) -> list[bytes]:
    return [block async for block in stream]


SIZES = (1, 5, 17, 4096)
USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
CHUNKS = [frame({"choices": [{"index": 0, "delta": {"content": word}}]})
          for word in ("Hel", "lo", "!")]
CHAT_STREAM = b"".join([*CHUNKS, frame({"choices": [], "usage": USAGE}), frame(b"[DONE]")])


@pytest.mark.parametrize("size", SIZES)
async def test_blocks_hold_whole_frames_and_the_tail_comes_last(size: int) -> None:
    data = CHAT_STREAM + b"data: {\"cut"
    blocks = await collect(sse_blocks(Upstream(data, size).iter_any()))
    assert b"".join(blocks) == data
    assert all(block.endswith(b"\n\n") for block in blocks[:-1])
    assert tail_of(blocks[-1]) == b'data: {"cut' and tail_of(blocks[0]) == b""
    assert sum(len(frames_of(b)) for b in blocks) == CHAT_STREAM.count(b"\n\n")


async def test_a_crlf_framed_stream_flows_frame_by_frame_byte_exact() -> None:
    """An engine framing with \\r\\n\\r\\n is passed on as its frames come (it used to be
    held back whole until the stream ended: no \\n\\n ever arrived)."""
    crlf = CHAT_STREAM.replace(b"\n", b"\r\n")
    frames = [f + b"\r\n\r\n" for f in crlf.split(b"\r\n\r\n")[:-1]]
    blocks = await collect(sse_blocks(Upstream(crlf, len(frames[0])).iter_any()))
    assert b"".join(blocks) == crlf
    assert len(blocks) > 1 and blocks[0] == frames[0]


@pytest.mark.parametrize("size", SIZES)
async def test_pass_through_is_byte_exact_and_drops_only_the_unasked_usage(size: int) -> None:
    asked = outcome()
    out = await collect(pass_frames(asked, upstream(CHAT_STREAM, size), False, True))
    assert b"".join(out) == CHAT_STREAM and asked.prompt_tokens == 7
    unasked = outcome()
    tail = b'data: {"usage": {"prompt_tokens"'  # a cut stream's end goes through as it is
    out = await collect(pass_frames(unasked, upstream(CHAT_STREAM + tail, size), True, False))
    assert b"".join(out) == b"".join(CHUNKS) + frame(b"[DONE]") + tail
    assert (unasked.prompt_tokens, unasked.completion_tokens) == (7, 3)
    for record in (asked, unasked):
        record.finish(200)


@pytest.mark.parametrize("size", SIZES)
async def test_native_stream_passes_through_and_its_final_response_is_stored(size: int) -> None:
    final = {"id": "resp_1", "status": "completed", "output": [{"type": "message"}],
             "usage": {"input_tokens": 4, "output_tokens": 2}}
    data = (frame({"type": "response.created"}, "response.created")
            + frame({"type": "response.completed", "response": final}, "response.completed"))
    record, store = outcome(), SqliteState(":memory:", ResponseLimits(4, 1 << 20, 1 << 20, 60))
    items = [{"type": "message", "role": "user", "content": "hi"}]
    out = await collect(native_frames(record, upstream(data, size), {"model": "m"}, items,
                                      store))
    assert b"".join(out) == data
    assert (record.prompt_tokens, record.completion_tokens) == (4, 2)
    stored = await store.get_response("resp_1", record.owner, time.time())
    assert stored is not None and stored.input_items() == items
    assert json.loads(stored.response) == final
    record.finish(200)


@pytest.mark.parametrize("size", SIZES)
async def test_translated_stream_ends_in_an_error_event_when_cut(size: int) -> None:
    record = outcome()
    out = await collect(translated_frames(record, upstream(b"".join(CHUNKS), size),
                                          {"model": "m"}, [],
                                          SqliteState(":memory:", ResponseLimits(
                                              4, 1 << 20, 1 << 20, 60))))
    events = [json.loads(f.split(b"data: ", 1)[1]) for f in b"".join(out).split(b"\n\n") if f]
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "error"
    assert "".join(e.get("delta", "") for e in events) == "Hello!"
    assert record.status == 502
    record.finish()


async def test_router_probe_is_a_supervised_task_stopped_at_shutdown() -> None:
    app = create_app(GatewayConfig(["http://127.0.0.1:9"]))  # nothing listens there
    tasks = app.quart.extensions["nebula_tasks"]
    async with app.quart.test_app():
        by_name = {task.get_name(): task for task in tasks.tasks}
        # (no Redis: no state probe; "batches": the Batch API's executor)
        assert set(by_name) == {"router-probe", "usage-flush", "batches"}
        probe = by_name["router-probe"]
        assert not probe.done()
    assert probe.cancelled() and not tasks.tasks


def test_without_usage_reads_only_the_frames_with_a_usage_and_keeps_every_other_byte(
        ) -> None:
    from nebula_gateway.passthrough import without_usage

    nulls = [frame({"choices": [{"index": 0, "delta": {"content": w}}], "usage": None})
             for w in ("a", "b")]
    with_choices = frame({"choices": [{"index": 0, "delta": {}}], "usage": USAGE})
    usage_only = frame({"choices": [], "usage": USAGE})
    block = b"".join([*nulls, with_choices, b": a comment\n\n", usage_only, frame(b"[DONE]")])
    kept, counted = without_usage(outcome(), block, drop_usage=False)
    assert counted and kept == block
    dropped, counted = without_usage(outcome(), block, drop_usage=True)
    assert counted and dropped == block.replace(usage_only, b"")  # a chunk with choices stays
    only_nulls = b"".join(nulls)
    assert without_usage(outcome(), only_nulls, drop_usage=True) == (only_nulls, False)
    compact = frame(b'{"choices":[],"usage":null}')  # as engines that follow OpenAI send it
    odd = frame(b'{"choices":[],"usage" : null}')  # another spacing: walked, still null
    for nothing in (compact * 3 + only_nulls, odd + compact):
        assert without_usage(outcome(), nothing, drop_usage=True) == (nothing, False)
    # one real usage among nulls of both spacings is still counted, and dropped
    mixed = compact + nulls[0] + usage_only + compact
    assert without_usage(outcome(), mixed, drop_usage=True) == (
        mixed.replace(usage_only, b""), True)
    # two usages: the later one counts, as in the stream's order; both usage-only chunks go
    later = frame({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}})
    record = outcome()
    assert without_usage(record, usage_only + compact + later, drop_usage=True) == (
        compact, True)
    assert (record.prompt_tokens, record.completion_tokens) == (9, 4)
    # a whole answer in one block: every chunk's null, then the usage chunk, then [DONE]
    answer = compact * 64 + usage_only + frame(b"[DONE]")
    record = outcome()
    assert without_usage(record, answer, drop_usage=True) == (
        compact * 64 + frame(b"[DONE]"), True)
    assert (record.prompt_tokens, record.completion_tokens) == (7, 3)
    # an engine that frames with CRLF (or CR) has its usage counted and dropped too
    for style in (b"\r\n\r\n", b"\r\r"):
        def styled(f: bytes, style: bytes = style) -> bytes:
            return f.replace(b"\n\n", style)
        record = outcome()
        assert without_usage(record, styled(answer), drop_usage=True) == (
            styled(compact * 64 + frame(b"[DONE]")), True)
        assert (record.prompt_tokens, record.completion_tokens) == (7, 3)
    # a frame not yet ended passes as it is, whatever it names
    cut = b'data: {"choices":[],"usage":{"prompt_tokens"'
    assert without_usage(outcome(), usage_only + cut, drop_usage=True) == (cut, True)


async def test_a_stream_whose_upstream_ended_goes_out_with_its_end() -> None:
    from nebula_gateway.reply import Reply, send_reply

    class Ended:
        def __init__(self) -> None:
            self.eof = False

        def at_eof(self) -> bool:
            return self.eof

    upstream = Ended()

    async def blocks() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"  # still streaming: sent as it comes
        upstream.eof = True
        yield b"data: 2\n\n"
        yield b"data: [DONE]\n\n"

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    record = outcome()
    await send_reply(send, Reply(200, [], stream=blocks(), upstream=upstream), record)  # type: ignore[arg-type]
    assert [(m["body"], m["more_body"]) for m in sent[1:]] == [
        (b"data: 1\n\n", True), (b"data: 2\n\ndata: [DONE]\n\n", False)]
    record.finish(200)


@pytest.mark.parametrize("style", [b"\n\n", b"\r\n\r\n", b"\r\r"])
def test_frames_are_read_in_the_stream_s_own_line_ending_style(style: bytes) -> None:
    lines = {b"\n\n": b"\n", b"\r\n\r\n": b"\r\n", b"\r\r": b"\r"}[style]
    block = (b"event: a" + lines + b'data: {"x":1}' + style + b'data: {"y":2}' + style)
    frames = frames_of(block)
    assert len(frames) == 2
    assert [json.loads(frame_data(f) or b"") for f in frames] == [{"x": 1}, {"y": 2}]
    assert tail_of(block + b"data: {") == b"data: {"
