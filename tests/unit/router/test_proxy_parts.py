"""The proxy without engines: flags, backoff, body limits, and what it reads for the policy."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from nebula_common.asgi import Message
from nebula_common.keys import Keys
from nebula_common.records import Endpoint, NodeStatus
from nebula_router.app import RouterApp, build_quart
from nebula_router.main import build_parser, main
from nebula_router.policy import (
    Candidate,
    Need,
    OutlierPolicy,
    Pipeline,
    RouteKeys,
    parse_profile,
)
from nebula_router.proxy import Proxy, ProxyConfig
from nebula_router.table import EndpointTable

K = Keys()
CHAT = {"model": "m1", "messages": [{"role": "system", "content": "be brief"}]}


def load(table: EndpointTable, *endpoints: Endpoint) -> None:
    """Fill ``table`` with ``endpoints``, each on a live node ``n1`` at 127.0.0.1."""
    table.load({K.endpoint(e.model_uid, e.replica_id): e.to_json() for e in endpoints}, {}, {},
               {K.node("n1"): NodeStatus("n1", "127.0.0.1").to_json()})


def make_proxy(pipeline: Pipeline | None = None, **config: object) -> Proxy:
    return Proxy(EndpointTable(None, K), pipeline or Pipeline.build(),
                 ProxyConfig(**config))  # type: ignore[arg-type]


async def call(app: RouterApp | Proxy, chunks: Sequence[bytes],
               headers: Sequence[tuple[bytes, bytes]] = (),
               disconnect: bool = False, more: bool = False) -> list[Message]:
    """Drive one POST through the ASGI app; returns what it sent.

    ``more``: the last chunk says more body follows, and none ever does.
    """
    inbox: list[Message] = [{"type": "http.request", "body": c,
                             "more_body": more or i < len(chunks) - 1}
                            for i, c in enumerate(chunks)]
    if disconnect:
        inbox[-1]["more_body"] = True
        inbox.append({"type": "http.disconnect"})
    sent: list[Message] = []

    async def receive() -> Message:
        if inbox:
            return inbox.pop(0)
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "query_string": b"", "headers": list(headers)}
    await app(scope, receive, send)
    return sent


def answer(sent: list[Message]) -> tuple[int, dict[str, bytes], dict[str, object]]:
    start, body = sent
    return start["status"], dict(start["headers"]), json.loads(body["body"])


def test_backoff_is_jittered_exponential_and_capped() -> None:
    proxy = make_proxy(retry_initial_s=0.01, retry_max_s=0.05)
    first = [proxy.backoff(1) for _ in range(50)]
    assert all(0.01 <= w <= 0.02 for w in first)
    assert len(set(first)) > 1  # jittered
    assert all(0.02 <= proxy.backoff(2) <= 0.03 for _ in range(20))
    assert all(proxy.backoff(10) <= 0.05 for _ in range(20))


def test_flags_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args([])
    assert args.policy == "least_load" and args.max_retries == 2 and args.access_log
    assert (args.body_timeout, args.ttfb_timeout, args.response_timeout) == (30, 120, 600)
    assert args.listen == "0.0.0.0:18081" and not args.no_replica_header
    assert args.policy_profile is None
    monkeypatch.setenv("NEBULA_ROUTER_POLICY", "prefix")
    monkeypatch.setenv("NEBULA_POLICY", "session")
    monkeypatch.setenv("NEBULA_ACCESS_LOG", "off")
    monkeypatch.setenv("NEBULA_NO_REPLICA_HEADER", "1")
    monkeypatch.setenv("NEBULA_POLICY_PROFILE", "/etc/nebula/policy.yaml")
    args = build_parser().parse_args([])
    assert args.policy == "prefix"  # NEBULA_ROUTER_POLICY wins, as the issue names it
    assert not args.access_log and args.no_replica_header
    assert args.policy_profile == "/etc/nebula/policy.yaml"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--policy", "fastest"])


def test_bad_profile_is_one_line_and_a_non_zero_exit(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("picker: [p2c, random]\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_:
        main(["--policy-profile", str(bad), "--log-format", "text"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err == (f"nebula-router: error: {bad}: picker 'p2c' always chooses: "
                   f"it must be the last picker\n")


def test_proxy_reads_what_the_preset_needs() -> None:
    assert make_proxy(Pipeline.build("prefix")).keys.prefix
    least = make_proxy(Pipeline.build("least_load")).keys
    assert least.session and not least.prefix and not least.session_user
    assert make_proxy(Pipeline.build("session")).keys.session_user
    rr = make_proxy(Pipeline.build("round_robin")).keys
    assert not (rr.session or rr.prefix or rr.tenant or rr.priority)


async def test_body_over_the_limit_is_413_declared_or_streamed() -> None:
    proxy = make_proxy(max_body_bytes=10)
    status, headers, body = answer(await call(proxy, [b"x" * 11],
                                              [(b"content-length", b"11")]))
    assert status == 413 and headers[b"content-type"] == b"application/json"
    assert body["error"] == {"message": "request body of 11 bytes exceeds the limit of 10 bytes",
                             "type": "invalid_request_error", "param": None,
                             "code": "request_too_large"}
    status, _, body = answer(await call(proxy, [b"x" * 6, b"x" * 6]))  # no content-length
    assert status == 413
    assert body["error"]["message"] == "request body exceeds the limit of 10 bytes"


async def test_client_gone_mid_body_gets_no_answer_and_bad_json_is_400() -> None:
    proxy = make_proxy()
    assert await call(proxy, [b'{"model"'], disconnect=True) == []
    status, _, body = answer(await call(proxy, [b"{nope"]))
    assert status == 400 and "not valid JSON" in str(body)
    status, headers, _ = answer(await call(proxy, [json.dumps(CHAT).encode()]))
    assert status == 503 and headers[b"retry-after"] == b"1"  # table never synced


async def test_json_nested_too_deeply_is_a_400_not_a_crash() -> None:
    depth = 100_000
    for body in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
        status, headers, answer_body = answer(await call(make_proxy(), [body]))
        assert status == 400 and headers[b"content-type"] == b"application/json"
        assert answer_body["error"] == {"message": "request body is nested too deeply to parse",
                                        "type": "invalid_request_error", "param": None,
                                        "code": None}


async def test_a_body_that_never_completes_is_408_after_the_body_timeout() -> None:
    proxy = make_proxy(body_timeout=0.1, total_timeout=0.05)  # the body has its own limit
    started = asyncio.get_running_loop().time()
    sent = await call(proxy, [b'{"model": "m1", ', b""], more=True)
    status, _, body = answer(sent)
    assert status == 408 and body["error"]["code"] == "body_timeout"
    assert body["error"]["message"] == "request body not received within 0.1s"
    assert 0.1 <= asyncio.get_running_loop().time() - started < 2


class Recorder:
    """A picker declaring ``needs``; it records the keys the proxy gave it."""

    def __init__(self, needs: Need) -> None:
        self.needs = needs
        self.seen: list[RouteKeys] = []

    def pick(self, cands: Sequence[Candidate], keys: RouteKeys,
             scores: Sequence[float] | None = None) -> tuple[Candidate, str]:
        self.seen.append(keys)
        return cands[0], "recorded"


ALL = Need.PREFIX | Need.SESSION | Need.TENANT | Need.PRIORITY


@pytest.mark.parametrize(("needs", "expected"), [
    (ALL, RouteKeys(session="s-1", prefix="system:be brief", tenant="team-a", priority="2")),
    (Need.TENANT, RouteKeys(tenant="team-a")),
    (Need.NONE, RouteKeys()),
])
async def test_proxy_extracts_exactly_the_declared_needs(needs: Need, expected: RouteKeys
                                                         ) -> None:
    recorder = Recorder(needs)
    profile = parse_profile({"picker": "p2c"}, name="recording")
    pipeline = Pipeline(profile, [], [], recorder, recorder.needs, OutlierPolicy())
    proxy = make_proxy(pipeline, max_retries=0, connect_timeout=1.0)
    # port 9 (discard) is closed on loopback: the attempt fails fast, after the pick
    load(proxy.table, Endpoint("m1", "m1", "0", "n1", "http://127.0.0.1:9", "sim"))
    await proxy.start()
    try:
        sent = await call(proxy, [json.dumps(CHAT).encode()],
                          [(b"x-session-id", b"s-1"), (b"x-nebula-tenant", b"team-a"),
                           (b"x-nebula-priority", b"2")])
    finally:
        await proxy.close()
    assert answer(sent)[0] == 503  # nothing listens there: no replica reachable
    assert recorder.seen == [expected]


async def test_debug_policy_route() -> None:
    proxy = make_proxy(Pipeline.build("session"))
    client = build_quart(proxy.table, proxy).test_client()
    response = await client.get("/debug/policy")
    assert response.status_code == 200
    assert await response.get_json() == {
        "name": "session", "kind": "preset", "path": None,
        "filters": ["ready", "not-ejected", "not-overloaded"], "scorers": {},
        "picker": [{"session-affinity": {"user": True}}, "p2c"],
        "needs": ["session", "session_user"]}
