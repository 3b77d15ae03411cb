"""Start-up: no open gateway on a network address unless asked; keys from a file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from nebula_gateway.config import ANONYMOUS_CONCURRENCY, ANONYMOUS_RPM, GatewayConfig
from nebula_gateway.main import build_parser, config_from_args, is_loopback, main


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NEBULA_API_KEYS", "NEBULA_API_KEYS_FILE", "NEBULA_ALLOW_ANONYMOUS",
                 "NEBULA_LISTEN", "NEBULA_MEDIA_ALLOW"):
        monkeypatch.delenv(name, raising=False)


def config(*argv: str) -> GatewayConfig:
    return config_from_args(build_parser().parse_args(list(argv)))


def test_loopback_addresses() -> None:
    for listen in ("127.0.0.1:8081", "[::1]:8081", "localhost:8081", "127.5.0.1:1"):
        assert is_loopback(listen), listen
    for listen in ("0.0.0.0:8081", ":8081", "[::]:8081", "10.0.0.5:8081", "gw.local:8081"):
        assert not is_loopback(listen), listen


def test_no_keys_on_a_network_address_refuses_to_start(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--listen", "0.0.0.0:0", "--log-format", "text"])
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "without API keys" in err and "--allow-anonymous" in err


def test_allow_anonymous_by_flag_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    open_config = config("--listen", "0.0.0.0:8081", "--allow-anonymous")
    assert not open_config.keys
    assert (open_config.anonymous_rpm, open_config.anonymous_concurrency) == (
        ANONYMOUS_RPM, ANONYMOUS_CONCURRENCY)
    assert ANONYMOUS_RPM > 0 and ANONYMOUS_CONCURRENCY > 0
    monkeypatch.setenv("NEBULA_ALLOW_ANONYMOUS", "1")
    assert not config("--listen", "0.0.0.0:8081").keys
    # loopback needs no permission: only this host can reach it
    monkeypatch.delenv("NEBULA_ALLOW_ANONYMOUS")
    assert not config("--listen", "127.0.0.1:8081").keys
    assert not config().keys  # the default address is loopback


def test_keys_from_a_file_named_by_the_environment(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "api_keys"  # e.g. a Docker secret under /run/secrets/
    digest = hashlib.sha256(b"sk-team").hexdigest()
    secret.write_text(f"{digest} team priority=high\n")
    monkeypatch.setenv("NEBULA_API_KEYS_FILE", str(secret))
    keys = config("--listen", "0.0.0.0:8081").keys
    assert [(k.name, k.priority) for k in keys.values()] == [("team", "high")]


def test_bad_media_allow_is_a_start_up_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        config("--media-allow", "file:///etc")
    assert caught.value.code == 2 and "--media-allow" in capsys.readouterr().err
