"""Hop-by-hop header filtering, both directions."""

from __future__ import annotations

from nebula_router.headers import request_headers, response_headers


def test_request_headers_drop_hop_by_hop_and_host() -> None:
    raw = [(b"host", b"router"), (b"content-length", b"12"), (b"connection", b"keep-alive, x-foo"),
           (b"keep-alive", b"timeout=5"), (b"te", b"trailers"), (b"upgrade", b"h2c"),
           (b"proxy-authorization", b"Basic x"), (b"x-foo", b"bar"),
           (b"transfer-encoding", b"chunked"),
           (b"authorization", b"Bearer k"), (b"content-type", b"application/json"),
           (b"x-request-id", b"abc"), (b"traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16
                                        + b"-01"),
           (b"accept", b"a"), (b"accept", b"b")]
    out = request_headers(raw)
    assert out == {"authorization": "Bearer k", "content-type": "application/json",
                   "x-request-id": "abc", "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01",
                   "accept": "a, b"}


def test_request_headers_drop_nebulas_internal_headers() -> None:
    raw = [(b"x-nebula-model-uid", b"m1"), (b"x-nebula-tenant", b"team-a"),
           (b"x-nebula-priority", b"1"), (b"x-nebula-session", b"s"),
           (b"x-session-id", b"s"), (b"x-nebulae", b"kept: not our prefix")]
    assert request_headers(raw) == {"x-session-id": "s", "x-nebulae": "kept: not our prefix"}


def test_response_headers_strip_hop_by_hop_and_keep_length_on_passthrough() -> None:
    # date and server are the router's server's own: the engine's would come twice
    raw = [(b"Content-Type", b"text/event-stream"), (b"Transfer-Encoding", b"chunked"),
           (b"Connection", b"close"), (b"Keep-Alive", b"x"), (b"Trailer", b"t"),
           (b"Proxy-Foo", b"1"), (b"Content-Length", b"10"), (b"X-Engine", b"sim"),
           (b"Date", b"Tue, 01 Dec 2026 23:00:00 GMT"), (b"Server", b"uvicorn")]
    assert response_headers(raw, keep_length=True) == [
        (b"content-type", b"text/event-stream"), (b"content-length", b"10"),
        (b"x-engine", b"sim")]
    assert (b"content-length", b"10") not in response_headers(raw, keep_length=False)
