"""Header handling for the proxy: hop-by-hop headers never cross the router, and the
``x-nebula-*`` headers (Nebula's own, from the gateway) never reach an engine."""

from __future__ import annotations

from collections.abc import Iterable

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"trailers",
    b"upgrade", b"proxy-connection", b"proxy-authenticate", b"proxy-authorization",
})

# Request headers the upstream call sets itself (the client writes host and length).
REQUEST_DROP = HOP_BY_HOP | {b"host", b"content-length", b"expect"}
REQUEST_DROP_PREFIXES = (b"proxy-", b"x-nebula-")
"""Request headers dropped by name prefix: proxy hop headers, and Nebula's internal ones."""

# Response headers the router's own server writes: the engine's would come twice (two
# ``date`` values), and its ``server`` names the engine and its version to every caller.
RESPONSE_DROP = HOP_BY_HOP | {b"date", b"server"}


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Extra hop-by-hop names listed in a ``Connection`` header (RFC 9110 7.6.1)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(tokens)


def request_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """ASGI request headers (lowercase bytes) -> headers for the upstream request."""
    raw = list(raw)
    extra = _connection_tokens(raw)
    out: dict[str, str] = {}
    for name, value in raw:
        if name in REQUEST_DROP or name.startswith(REQUEST_DROP_PREFIXES) or name in extra:
            continue
        key = name.decode("latin-1")
        text = value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


def response_headers(raw: Iterable[tuple[bytes, bytes]], *, keep_length: bool
                     ) -> list[tuple[bytes, bytes]]:
    """Upstream response headers (name, value pairs) -> ASGI response headers.

    ``content-length`` is kept only when the body is passed through whole and
    unchanged (``keep_length``); otherwise the server frames the stream itself.
    """
    raw = [(n.lower(), v) for n, v in raw]
    extra = _connection_tokens(raw)
    out = []
    for name, value in raw:
        if name in RESPONSE_DROP or name.startswith(b"proxy-") or name in extra:
            continue
        if name == b"content-length" and not keep_length:
            continue
        out.append((name, value))
    return out
