"""``nebula-gateway``: the public OpenAI-compatible edge in front of the routers."""

from __future__ import annotations

import argparse
import gc
import logging
import os

from nebula_common.config import Parser, add_common_flags, fail, on_off
from nebula_common.logs import setup_logging
from nebula_common.service import add_http_server_flag, run_app

from .auth import KeyFileError, load_keys
from .config import GatewayConfig

PROG = "nebula-gateway"
log = logging.getLogger("nebula.gateway")


def build_parser() -> Parser:
    parser = Parser(prog=PROG, description=__doc__)
    add_common_flags(parser, listen="0.0.0.0:8081", etcd=False)
    # Accepted for the common CLI contract; the gateway learns models from the router.
    parser.add_flag("--etcd-endpoints", default=None,
                    help="unused: models come from the router's GET /v1/models")
    parser.add_flag("--etcd-prefix", default="", help="unused (see --etcd-endpoints)")
    parser.add_flag("--router-url", default="http://127.0.0.1:18081",
                    help="comma-separated router base URLs; failover in order")
    parser.add_flag("--max-body-bytes", default=4 * 1024 * 1024, type=int,
                    help="largest request body accepted (413 above)")
    parser.add_flag("--api-keys-file", default=None,
                    help="file of sha256 key hashes: 'HASH [name] [rpm=N] [concurrency=N] "
                         "[models=a,b]' per line")
    parser.add_flag("--api-keys", default=None,
                    help="comma-separated plaintext API keys (hashed at start-up); "
                         "prefer the environment variable")
    parser.add_flag("--rate-limit-rpm", default=0, type=int,
                    help="default requests per minute per key (0 = unlimited)")
    parser.add_flag("--max-concurrency-per-key", default=0, type=int,
                    help="default concurrent requests per key (0 = unlimited)")
    parser.add_flag("--request-timeout", default=600.0, type=float,
                    help="seconds without a byte from the router before giving up")
    parser.add_flag("--body-timeout", default=30.0, type=float,
                    help="seconds allowed to receive a request body")
    parser.add_flag("--models-cache-seconds", default=2.0, type=float,
                    help="how long the router's model list is cached")
    parser.add_flag("--store-responses", default=1024, type=int,
                    help="responses kept in memory for previous_response_id (0 = none)")
    add_http_server_flag(parser)
    parser.add_flag("--access-log", default=True, type=on_off,
                    help="one JSON line per request (logger nebula.gateway.access): on/off")
    return parser


def config_from_args(args: argparse.Namespace) -> GatewayConfig:

    urls = [u.strip() for u in (args.router_url or "").split(",") if u.strip()]
    if not urls:
        fail(PROG, "--router-url needs at least one URL")
    for url in urls:
        if not url.startswith(("http://", "https://")):
            fail(PROG, f"--router-url {url!r} must start with http:// or https://")
    if args.max_body_bytes <= 0:
        fail(PROG, "--max-body-bytes must be positive")
    file_text = None
    if args.api_keys_file:
        try:
            with open(args.api_keys_file, encoding="utf-8") as handle:
                file_text = handle.read()
        except OSError as exc:
            fail(PROG, f"cannot read --api-keys-file {args.api_keys_file}: {exc.strerror}")
    plaintext = (args.api_keys or "").split(",")
    try:
        keys = load_keys(file_text, plaintext)
    except KeyFileError as exc:
        fail(PROG, f"--api-keys-file {args.api_keys_file}: {exc}")
    args.api_keys = None  # drop the plaintext as soon as it is hashed
    os.environ.pop("NEBULA_API_KEYS", None)
    return GatewayConfig(
        router_urls=urls, max_body_bytes=args.max_body_bytes,
        request_timeout=args.request_timeout, body_timeout=args.body_timeout,
        models_cache_seconds=args.models_cache_seconds, store_responses=args.store_responses,
        default_rpm=args.rate_limit_rpm, default_concurrency=args.max_concurrency_per_key,
        keys=keys, access_log=args.access_log,
    )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging("gateway", args.log_level, args.log_format)
    config = config_from_args(args)
    from .app import create_app

    app = create_app(config)

    async def started() -> None:
        # start-up objects (app, modules) never change: keep them out of every GC pass
        gc.collect()
        gc.freeze()
        # logged once the socket is bound, so a busy port stays a one-line error
        log.info("gateway listening", extra={
            "listen": args.listen, "routers": config.router_urls,
            "api_keys": len(config.keys), "auth": "on" if config.keys else "off"})

    run_app(app, listen=args.listen, prog=PROG, before=started,
            server=args.http_server)


if __name__ == "__main__":
    main()
