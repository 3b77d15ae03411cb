"""The sim's wire-shape faults: embeddings refused as llama.cpp does, CRLF-framed streams."""

from __future__ import annotations

import json

from nebula_node.sim.engine import NO_EMBEDDINGS
from nebula_node.sim.main import build_parser, engine_from_args
from tests.unit.sim.test_sim_app import CHAT, client, sse_data

EMBED = {"model": "m", "input": "abc"}


async def test_embeddings_unsupported_answers_as_llama_cpp_python() -> None:
    c, engine = client(embeddings_unsupported=True)
    r = await c.post("/v1/embeddings", json=EMBED)
    assert r.status_code == 500
    # llama_cpp.server's RouteErrorHandler: {"error": ErrorResponse} for a RuntimeError
    assert json.loads(await r.get_data()) == {"error": {
        "message": NO_EMBEDDINGS, "type": "internal_server_error", "param": None,
        "code": None}}
    assert engine.stats()["requests_failed"] == 1
    assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200  # chat works
    await c.post("/sim/faults", json={"embeddings_unsupported": False})
    assert (await c.post("/v1/embeddings", json=EMBED)).status_code == 200
    assert (await c.post("/sim/faults", json={"crlf_frames": 1})).status_code == 400


async def test_crlf_frames_end_every_line_with_crlf_and_carry_the_same_events() -> None:
    plain, _ = client(itl_ms=1)
    crlf, _ = client(itl_ms=1, crlf_frames=True)
    body = {**CHAT, "stream": True}
    want = await (await plain.post("/v1/chat/completions", json=body)).get_data()
    got = await (await crlf.post("/v1/chat/completions", json=body)).get_data()
    assert got.count(b"\r\n\r\n") == want.count(b"\n\n") >= 3
    assert b"\n" not in got.replace(b"\r\n", b"")  # no bare LF anywhere
    strip = ("id", "created")
    events = [[{k: v for k, v in e.items() if k not in strip} if isinstance(e, dict) else e
               for e in sse_data(data.replace(b"\r\n", b"\n"))] for data in (want, got)]
    assert events[0] == events[1]


async def test_crlf_frames_leave_non_streamed_answers_alone() -> None:
    c, _ = client(crlf_frames=True)
    r = await c.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200 and b"\r" not in await r.get_data()


def test_flags_set_the_wire_faults() -> None:
    parser = build_parser()
    e = engine_from_args(parser.parse_args(["--model-name", "m", "--embeddings-unsupported",
                                            "--crlf-frames"]), parser)
    assert e.faults.embeddings_unsupported and e.faults.crlf_frames
    e = engine_from_args(parser.parse_args(["--model-name", "m"]), parser)
    assert not (e.faults.embeddings_unsupported or e.faults.crlf_frames)
