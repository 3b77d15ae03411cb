"""``nebula-gateway``: the public OpenAI-compatible edge in front of the routers."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os

from nebula_common.config import (
    Parser,
    add_common_flags,
    add_etcd_flags,
    etcd_config,
    fail,
    listen_address,
    on_off,
)
from nebula_common.http_servers import add_http_server_flag
from nebula_common.logs import setup_logging
from nebula_common.service import run_app
from nebula_common.workers import add_workers_flag, serve_workers

from .auth import KeyFileError, load_keys
from .budget import DEFAULT_MAX_TOKENS
from .config import ANONYMOUS_CONCURRENCY, ANONYMOUS_RPM, MAX_IN_FLIGHT, GatewayConfig
from .media import MediaPolicy
from .response_store import ENTRY_BYTES, STORE_BYTES, TTL
from .state import StateError, check_url, describe

PROG = "nebula-gateway"
log = logging.getLogger("nebula.gateway")


def build_parser() -> Parser:
    parser = Parser(prog=PROG, description=__doc__)
    # loopback unless told otherwise: a wider address needs keys (or --allow-anonymous)
    add_common_flags(parser, listen="127.0.0.1:8081", etcd=False)
    # Models come from the router's GET /v1/models; etcd only holds run-time keys.
    add_etcd_flags(parser)
    parser.add_flag("--watch-keys", default=False, type=on_off,
                    help="follow the run-time API keys (`nebula keys`) under the etcd "
                         "prefix's /keys/: on/off (on: a key is always required)")
    parser.add_flag("--state-url", default="",
                    help="shared gateway state (token budgets, usage, stored responses): "
                         "redis://HOST:PORT[/DB]; or sqlite:///PATH; default: SQLite in "
                         "--state-dir (in memory without one)")
    parser.add_flag("--state-dir", default=None,
                    help="folder of this gateway's state.db (kept across restarts)")
    parser.add_flag("--state-fail", default="open", choices=["open", "closed"],
                    help="while a shared store is unreachable: serve on local counters "
                         "(open) or refuse with 503 what needs the store (closed)")
    parser.add_flag("--default-max-tokens", default=DEFAULT_MAX_TOKENS, type=int,
                    help="completion tokens reserved for a request without max_tokens, for "
                         "keys with a tpm or a token budget")
    parser.add_flag("--router-url", default="http://127.0.0.1:18081",
                    help="comma-separated router base URLs; failover in order")
    parser.add_flag("--max-body-bytes", default=4 * 1024 * 1024, type=int,
                    help="largest request body accepted (413 above)")
    parser.add_flag("--max-file-bytes", default=64 * 1024 * 1024, type=int,
                    help="largest file uploaded to /v1/files (batch input; 413 above)")
    parser.add_flag("--batch-concurrency", default=16, type=int,
                    help="lines of a batch this gateway runs at once (at priority batch)")
    parser.add_flag("--batch-window", default=24 * 3600, type=int,
                    help="seconds a batch has to finish (its completion_window, 24h); past "
                         "them it is expired, its unfinished lines in its error file")
    parser.add_flag("--api-keys-file", default=None,
                    help="file of sha256 key hashes: 'HASH [name] [rpm=N] [concurrency=N] "
                         "[tpm=N] [budget=N/day|month] [models=a,b] [priority=P]' per line")
    parser.add_flag("--api-keys", default=None,
                    help="comma-separated plaintext API keys (hashed at start-up); "
                         "prefer the environment variable or --api-keys-file")
    parser.add_flag("--allow-anonymous", action="store_true",
                    help="serve callers without a key on a non-loopback address when no key "
                         "is configured (otherwise the gateway refuses to start)")
    parser.add_flag("--rate-limit-rpm", default=0, type=int,
                    help="default requests per minute per key (0 = unlimited)")
    parser.add_flag("--max-concurrency-per-key", default=0, type=int,
                    help="default concurrent requests per key (0 = unlimited)")
    parser.add_flag("--anonymous-rpm", default=ANONYMOUS_RPM, type=int,
                    help="requests per minute of all callers together when there are no keys "
                         "(0 = --rate-limit-rpm)")
    parser.add_flag("--anonymous-concurrency", default=ANONYMOUS_CONCURRENCY, type=int,
                    help="concurrent requests of all callers together when there are no keys "
                         "(0 = --max-concurrency-per-key)")
    parser.add_flag("--max-in-flight", default=MAX_IN_FLIGHT, type=int,
                    help="requests this gateway serves at once; 503 with Retry-After beyond "
                         "(0 = no cap)")
    parser.add_flag("--expose-replica-header", action="store_true",
                    help="pass the router's x-nebula-replica (which replica answered) on to "
                         "clients")
    parser.add_flag("--media-allow", default="",
                    help="comma-separated [http://|https://]host (https when bare, *.domain "
                         "for subdomains) whose image/media URLs engines may fetch; data: "
                         "URLs are always allowed, nothing else by default")
    parser.add_flag("--request-timeout", default=600.0, type=float,
                    help="seconds without a byte from the router before giving up")
    parser.add_flag("--body-timeout", default=30.0, type=float,
                    help="seconds allowed to receive a request body")
    parser.add_flag("--models-cache-seconds", default=2.0, type=float,
                    help="how long the router's model list is cached")
    parser.add_flag("--models-stale-seconds", default=60.0, type=float,
                    help="how much longer the last model list is served while no router "
                         "answers GET /v1/models")
    parser.add_flag("--store-responses", default=1024, type=int,
                    help="responses kept for previous_response_id, in the state store (0 = none)")
    parser.add_flag("--response-store-bytes", default=STORE_BYTES, type=int,
                    help="bytes of stored responses kept in all (the oldest go first)")
    parser.add_flag("--response-entry-bytes", default=ENTRY_BYTES, type=int,
                    help="a stored response larger than this (with its input) is not kept")
    parser.add_flag("--response-ttl", default=TTL, type=float,
                    help="seconds a stored response is kept")
    add_http_server_flag(parser)
    add_workers_flag(parser)
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
    watch = None
    if args.watch_keys:
        try:
            watch = etcd_config(args)
        except ValueError as exc:
            fail(PROG, str(exc))
    try:
        check_url(args.state_url)
    except ValueError as exc:
        fail(PROG, f"--state-url: {exc}")
    if args.default_max_tokens <= 0:
        fail(PROG, "--default-max-tokens must be positive")
    if not keys and watch is None and not args.allow_anonymous and not is_loopback(args.listen):
        fail(PROG, f"refusing to serve {args.listen} without API keys: anyone who can reach "
                   "it could use every model; give --api-keys-file (or NEBULA_API_KEYS), or "
                   "--allow-anonymous (NEBULA_ALLOW_ANONYMOUS=1) to serve it open")
    try:
        media = MediaPolicy.parse(args.media_allow)
    except ValueError as exc:
        fail(PROG, f"--media-allow: {exc}")
    if args.max_file_bytes <= 0 or args.batch_concurrency <= 0 or args.batch_window <= 0:
        fail(PROG, "--max-file-bytes, --batch-concurrency and --batch-window must be positive")
    for flag in ("anonymous_rpm", "anonymous_concurrency", "max_in_flight"):
        if getattr(args, flag) < 0:
            fail(PROG, f"--{flag.replace('_', '-')} must not be negative")
    return GatewayConfig(
        router_urls=urls, max_body_bytes=args.max_body_bytes,
        request_timeout=args.request_timeout, body_timeout=args.body_timeout,
        models_cache_seconds=args.models_cache_seconds,
        models_stale_seconds=args.models_stale_seconds, store_responses=args.store_responses,
        response_store_bytes=args.response_store_bytes,
        response_entry_bytes=args.response_entry_bytes, response_ttl=args.response_ttl,
        default_rpm=args.rate_limit_rpm, default_concurrency=args.max_concurrency_per_key,
        anonymous_rpm=args.anonymous_rpm, anonymous_concurrency=args.anonymous_concurrency,
        max_in_flight=args.max_in_flight, expose_replica_header=args.expose_replica_header,
        media=media, keys=keys, access_log=args.access_log, watch_keys=watch,
        etcd_prefix=args.etcd_prefix or "", state_url=args.state_url,
        state_dir=args.state_dir, state_fail_open=args.state_fail == "open",
        default_max_tokens=args.default_max_tokens,
        max_file_bytes=args.max_file_bytes, batch_concurrency=args.batch_concurrency,
        batch_window=args.batch_window,
    )


def is_loopback(listen: str) -> bool:
    """Does ``HOST:PORT`` accept connections from this host only?"""
    try:
        host, _ = listen_address(listen)
    except ValueError:
        return False  # (run_app refuses it with its own message)
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name may resolve to anything


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging("gateway", args.log_level, args.log_format)
    config = config_from_args(args)
    serve_workers(args.workers, module="nebula_gateway.main", argv=argv, listen=args.listen,
                  prog=PROG)
    from .app import create_app

    try:
        app = create_app(config)
    except StateError as exc:
        fail(PROG, str(exc), code=1)

    async def started() -> None:
        # logged once the socket is bound, so a busy port stays a one-line error
        log.info("gateway listening", extra={
            "listen": args.listen, "routers": config.router_urls,
            "api_keys": len(config.keys),
            "auth": "on" if config.keys or config.watch_keys else "off",
            "watch_keys": config.watch_keys is not None,
            "state": describe(config.state_url, config.state_dir),
            **({} if config.keys or config.watch_keys else {
                "anonymous_rpm": config.anonymous_rpm,
                "anonymous_concurrency": config.anonymous_concurrency})})

    run_app(app, listen=args.listen, prog=PROG, before=started,
            server=args.http_server)


if __name__ == "__main__":
    main()
