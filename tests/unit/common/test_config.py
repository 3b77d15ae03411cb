"""Flags read NEBULA_* environment variables; bad values are one-line errors."""

import pytest

from nebula_common.config import Parser, add_common_flags, env_name, etcd_config, listen_address
from nebula_common.store import EtcdConfig


def test_env_name() -> None:
    assert env_name("--etcd-endpoints") == "NEBULA_ETCD_ENDPOINTS"


def test_flags_default_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEBULA_ETCD_ENDPOINTS", "http://e1:2379,e2:2380")
    monkeypatch.setenv("NEBULA_LISTEN", "127.0.0.1:9999")
    parser = Parser(prog="t")
    add_common_flags(parser, listen="0.0.0.0:1")
    args = parser.parse_args([])
    assert args.listen == "127.0.0.1:9999"
    assert etcd_config(args).endpoints == ("e1:2379", "e2:2380")
    # an explicit flag wins over the environment
    assert parser.parse_args(["--listen", "0.0.0.0:2"]).listen == "0.0.0.0:2"


def test_bad_env_value_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NEBULA_RETRIES", "many")
    parser = Parser(prog="t")
    with pytest.raises(SystemExit) as exc:
        parser.add_flag("--retries", default=1, type=int)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NEBULA_RETRIES" in err


@pytest.mark.parametrize("value", ["", "host", "host:", ":x", "a,,"])
def test_bad_endpoints(value: str) -> None:
    with pytest.raises(ValueError):
        EtcdConfig.parse_endpoints(value)


def test_listen_address() -> None:
    assert listen_address("0.0.0.0:8081") == ("0.0.0.0", 8081)
    assert listen_address(":8081") == ("0.0.0.0", 8081)
    assert listen_address("[::1]:80") == ("::1", 80)
    for bad in ("8081", "host:port", "h:70000"):
        with pytest.raises(ValueError):
            listen_address(bad)
