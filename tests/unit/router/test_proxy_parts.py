"""Pure parts of the proxy and the CLI: retry backoff, flags."""

from __future__ import annotations

import pytest

from nebula_common.keys import Keys
from nebula_router.main import build_parser
from nebula_router.policy import Pipeline
from nebula_router.proxy import Proxy, ProxyConfig
from nebula_router.table import EndpointTable


def test_backoff_is_jittered_exponential_and_capped() -> None:
    proxy = Proxy(EndpointTable(None, Keys()), Pipeline(),
                  ProxyConfig(retry_initial_s=0.01, retry_max_s=0.05))
    first = [proxy.backoff(1) for _ in range(50)]
    assert all(0.01 <= w <= 0.02 for w in first)
    assert len(set(first)) > 1  # jittered
    assert all(0.02 <= proxy.backoff(2) <= 0.03 for _ in range(20))
    assert all(proxy.backoff(10) <= 0.05 for _ in range(20))


def test_flags_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args([])
    assert args.policy == "least_load" and args.max_retries == 2 and args.access_log
    assert args.listen == "0.0.0.0:18081" and not args.no_replica_header
    monkeypatch.setenv("NEBULA_ROUTER_POLICY", "prefix")
    monkeypatch.setenv("NEBULA_POLICY", "session")
    monkeypatch.setenv("NEBULA_ACCESS_LOG", "off")
    monkeypatch.setenv("NEBULA_NO_REPLICA_HEADER", "1")
    args = build_parser().parse_args([])
    assert args.policy == "prefix"  # NEBULA_ROUTER_POLICY wins, as the issue names it
    assert not args.access_log and args.no_replica_header
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--policy", "fastest"])
