"""Command-line flags that also read ``NEBULA_*`` environment variables.

Every flag ``--some-thing`` defaults to the environment variable
``NEBULA_SOME_THING`` (containers are configured by environment), then to the
built-in default. Flags common to all roles are added by :func:`add_common_flags`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from .keys import Keys
from .store import EtcdConfig

ENV_PREFIX = "NEBULA_"


def env_name(flag: str) -> str:
    """``--etcd-endpoints`` -> ``NEBULA_ETCD_ENDPOINTS``."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


class Parser(argparse.ArgumentParser):
    """argparse with env-var defaults and one-line errors (exit code 2)."""

    def add_flag(self, flag: str, *, default: Any = None, type: Any = str, **kwargs: Any) -> None:
        """Add ``flag`` whose default comes from ``NEBULA_<FLAG>`` when set."""
        env = env_name(flag)
        raw = os.environ.get(env)
        if raw is not None and raw != "":
            if kwargs.get("action") == "store_true":
                default = raw.strip().lower() in ("1", "true", "yes", "on")
            else:
                try:
                    default = type(raw)
                except (TypeError, ValueError):
                    self.error(f"{env}={raw!r} is not a valid value for {flag}")
        help_text = kwargs.pop("help", "")
        kwargs["help"] = f"{help_text} [env {env}]".strip()
        if kwargs.get("action") == "store_true":
            self.add_argument(flag, default=bool(default), **kwargs)
        else:
            self.add_argument(flag, default=default, type=type, **kwargs)

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def on_off(value: str) -> bool:
    """Flag type for switches given as on/off (also true/false, yes/no, 1/0)."""
    lowered = str(value).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected on or off, got {value!r}")


def listen_address(value: str) -> tuple[str, int]:
    """``"0.0.0.0:18081"`` -> ``("0.0.0.0", 18081)``; raises ValueError otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address {value!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def add_etcd_flags(parser: Parser, *, timeout: float = 5.0) -> None:
    """How to reach etcd: endpoints, key prefix, auth, TLS, per-call timeout."""
    parser.add_flag("--etcd-endpoints", default="127.0.0.1:2379",
                    help="comma-separated etcd endpoints")
    parser.add_flag("--etcd-prefix", default="", help="key prefix shared by one cluster")
    parser.add_flag("--etcd-username", default=None, help="etcd user (auth enabled)")
    parser.add_flag("--etcd-password", default=None, help="etcd password")
    parser.add_flag("--etcd-password-file", default=None,
                    help="file holding the etcd password (a secret; wins over --etcd-password)")
    parser.add_flag("--etcd-ca-cert", default=None, help="CA bundle for etcd TLS")
    parser.add_flag("--etcd-cert", default=None, help="client certificate for etcd TLS")
    parser.add_flag("--etcd-key", default=None, help="client key for etcd TLS")
    parser.add_flag("--etcd-timeout", default=timeout, type=float, help="seconds per etcd call")


def add_common_flags(parser: Parser, *, listen: str, etcd: bool = True) -> None:
    """Flags every role takes: listen address, etcd connection, logging."""
    parser.add_flag("--listen", default=listen, help="HOST:PORT of this service's HTTP server")
    if etcd:
        add_etcd_flags(parser)
    parser.add_flag("--log-level", default="info", help="debug, info, warning or error")
    parser.add_flag("--log-format", default="json", choices=["json", "text"],
                    help="log line format")


def etcd_config(args: argparse.Namespace) -> EtcdConfig:
    """Build the etcd connection settings from parsed common flags."""
    password = args.etcd_password
    if args.etcd_password_file:
        # A secret mounted as a file (Docker/Nomad secrets) never shows in `ps` or the env.
        try:
            password = Path(args.etcd_password_file).read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read --etcd-password-file: {exc}") from None
    return EtcdConfig(
        endpoints=EtcdConfig.parse_endpoints(args.etcd_endpoints),
        username=args.etcd_username,
        password=password,
        ca_cert=args.etcd_ca_cert,
        client_cert=args.etcd_cert,
        client_key=args.etcd_key,
        timeout=args.etcd_timeout,
    )


def keys(args: argparse.Namespace) -> Keys:
    return Keys(args.etcd_prefix or "")


def fail(prog: str, message: str, code: int = 2) -> NoReturn:
    """Print one line on stderr and exit non-zero: how every role reports a bad start."""
    sys.stderr.write(f"{prog}: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)
