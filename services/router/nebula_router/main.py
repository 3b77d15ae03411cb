"""``nebula-router``: placement-aware OpenAI router in front of the engine replicas."""

from __future__ import annotations

import json
import logging
import os
import random
import socket

from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException

from nebula_common.config import Parser, add_common_flags, etcd_config, fail, keys, on_off
from nebula_common.http_servers import add_http_server_flag
from nebula_common.logs import setup_logging
from nebula_common.openai_errors import error_json
from nebula_common.service import run_app
from nebula_common.store import EtcdStore, LeaseKeeper
from nebula_common.tasks import TaskSet
from nebula_common.tracing import setup_tracing, shutdown_tracing, tracing_enabled
from nebula_common.workers import add_workers_flag, serve_workers

from .admission import Admission, QueueConfig
from .admission.signal import SignalPublisher
from .app import RouterApp, build_quart
from .failover import DEFAULT_LIMIT
from .policy import POLICIES, OutlierPolicy, Pipeline, PolicyError, Settings, load_profile
from .proxy import Proxy, ProxyConfig
from .table import EndpointTable

PROG = "nebula-router"
log = logging.getLogger("nebula.router")


def build_parser() -> Parser:
    p = Parser(prog=PROG, description=__doc__)
    add_common_flags(p, listen="0.0.0.0:18081")
    p.add_flag("--policy", default="least_load", choices=list(POLICIES), metavar="POLICY",
               help="replica choice: least_load (power of two choices), round_robin, random, "
                    "session (affinity on x-session-id or user), prefix (prompt-prefix affinity)")
    p.add_flag("--policy-profile", default=None, metavar="PATH",
               help="YAML policy profile (filters, weighted scorers, picker); replaces --policy")
    p.add_flag("--max-retries", default=2, type=int,
               help="extra replicas tried when one fails before the first byte")
    p.add_flag("--max-body-bytes", default=16 * 1024 * 1024, type=int,
               help="larger request bodies get 413")
    p.add_flag("--body-timeout", default=30.0, type=float,
               help="seconds for a request body to arrive, else 408 (0 = no limit)")
    p.add_flag("--connect-timeout", default=2.0, type=float, help="seconds to connect upstream")
    p.add_flag("--ttfb-timeout", default=120.0, type=float,
               help="streams: seconds until the upstream's first body byte, else another "
                    "replica is tried")
    p.add_flag("--response-timeout", default=600.0, type=float,
               help="non-streamed requests: seconds for the whole answer, else 504 (no retry: "
                    "the engine may still be working on it)")
    p.add_flag("--idle-timeout", default=120.0, type=float,
               help="seconds of upstream silence tolerated in a stream (also bounds the wait "
                    "for its headers)")
    p.add_flag("--total-timeout", default=900.0, type=float, help="seconds per request, all in")
    # The issue names NEBULA_ROUTER_POLICY; NEBULA_POLICY (the generic rule) works too.
    router_policy = os.environ.get("NEBULA_ROUTER_POLICY")
    if router_policy:
        if router_policy not in POLICIES:
            p.error(f"NEBULA_ROUTER_POLICY={router_policy!r} is not one of {', '.join(POLICIES)}")
        p.set_defaults(policy=router_policy)
    p.add_flag("--upstream-keepalive", default=4.0, type=float,
               help="seconds an idle upstream connection stays pooled (keep it under the "
                    "engines' keep-alive timeout)")
    p.add_flag("--eject-after", default=3, type=int,
               help="consecutive failures that eject a replica (0 disables); a connect "
                    "timeout on a replica that answered within 10 s is not one (a full "
                    "accept queue during a connection storm)")
    p.add_flag("--eject-base", default=5.0, type=float,
               help="first ejection period in seconds; doubles on each repeat")
    p.add_flag("--eject-max", default=120.0, type=float, help="longest ejection period")
    p.add_flag("--bound-load", default=0.25, type=float,
               help="affinity slack c: skip the preferred replica above (1+c) x average load")
    p.add_flag("--max-in-flight", default=0, type=int,
               help="per-replica in-flight cap treated as overloaded (0 = none)")
    p.add_flag("--prefix-chars", default=1024, type=int,
               help="leading prompt characters hashed by the prefix policy")
    p.add_flag("--stream-failover-max", default=2, type=int,
               help="resumes of a chat or completions stream broken mid-way on another "
                    "replica (0 = off: a broken stream ends with an SSE error event)")
    p.add_flag("--stream-failover-bytes", default=DEFAULT_LIMIT, type=int,
               help="forwarded bytes kept per stream for a resume; past them the stream "
                    "is not resumed")
    p.add_flag("--max-running-per-replica", default="auto", type=max_running,
               metavar="N|auto|0",
               help="admission queue: requests run at once per ready replica (this router's "
                    "plus the engine's reported others); the rest wait in the router's queue "
                    "by priority class and tenant. auto: each replica's declared concurrency "
                    "(its endpoint record); N overrides it; 0 = off: no queue")
    p.add_flag("--queue-max", default=256, type=int,
               help="admission queue: requests waiting per model, else 429 queue_full")
    p.add_flag("--queue-timeout", default="30,60,120", metavar="I,D,B",
               help="admission queue: seconds an interactive,default,batch request may wait, "
                    "else 503 queue_timeout")
    p.add_flag("--queue-aging", default=10.0, type=float,
               help="admission queue: seconds waited per class a request is lifted (0 = none)")
    p.add_flag("--router-id", default=None,
               help="this router's name in its queue signal (/queues/<id>); default "
                    "host-pid")
    p.add_flag("--no-replica-header", action="store_true",
               help="do not add x-nebula-replica to responses")
    add_http_server_flag(p)
    add_workers_flag(p)
    p.add_flag("--access-log", default=True, type=on_off, help="one JSON line per request: on/off")
    return p


def max_running(text: str) -> int | None:
    """``--max-running-per-replica``: ``auto`` -> 0 (each replica's declared concurrency),
    N > 0 -> N (the operator's override), ``0`` or ``off`` -> None (no queue)."""
    value = str(text).strip().lower()
    if value == "auto":
        return 0
    if value in ("0", "off"):
        return None
    n = int(value)  # argparse turns a ValueError into a one-line usage error
    if n < 0:
        raise ValueError(value)
    return n


def add_http_errors(app: Quart) -> None:
    """OpenAI-shaped 404 and 405 answers (``POST //v1/chat/completions`` included)."""

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        path = request.scope["path"]  # as sent: request.path has its slashes merged
        code: str | None
        if status == 404:
            message, code = f"no route {request.method} {path}", "not_found"
        elif status == 405:
            message = f"method {request.method} not allowed on {path}"
            code = "method_not_allowed"
        else:
            message, code = exc.description or exc.name, None
        response = Response(error_json(status, message, code=code), status=status,
                            content_type="application/json")
        allowed = getattr(exc, "valid_methods", None)
        if allowed:
            response.headers["Allow"] = ", ".join(sorted(allowed))
        return response


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging("router", args.log_level, args.log_format)
    settings = Settings(outlier=OutlierPolicy(args.eject_after, args.eject_base, args.eject_max),
                        bound_c=args.bound_load, max_in_flight=args.max_in_flight,
                        rng=random.Random())
    try:
        profile = load_profile(args.policy_profile) if args.policy_profile else args.policy
        pipeline = Pipeline.build(profile, settings)
    except PolicyError as exc:
        fail(PROG, str(exc))
    try:
        cfg = etcd_config(args)
    except ValueError as exc:
        fail(PROG, str(exc))
    serve_workers(args.workers, module="nebula_router.main", argv=argv, listen=args.listen,
                  prog=PROG)
    tracer = setup_tracing("router") if tracing_enabled() else None
    store = EtcdStore(cfg)
    table = EndpointTable(store, keys(args))
    admission: Admission | None = None
    if args.max_running_per_replica is not None:
        try:
            timeouts = tuple(float(t) for t in args.queue_timeout.split(","))
            queue_cfg = QueueConfig(args.queue_max, timeouts, args.queue_aging)
        except ValueError as exc:
            fail(PROG, f"--queue-timeout/--queue-max/--queue-aging: {exc}")
        admission = Admission(args.max_running_per_replica, queue_cfg, table.get)
    tasks = TaskSet("router")
    publisher: SignalPublisher | None = None
    if admission is not None:
        router_id = args.router_id or f"{socket.gethostname()}-{os.getpid()}"
        publisher = SignalPublisher(admission, LeaseKeeper(store, ttl=5, tasks=tasks),
                                    keys(args), router_id)
    proxy = Proxy(table, pipeline, ProxyConfig(
        max_retries=max(args.max_retries, 0), max_body_bytes=args.max_body_bytes,
        body_timeout=args.body_timeout, connect_timeout=args.connect_timeout,
        ttfb_timeout=args.ttfb_timeout, response_timeout=args.response_timeout,
        idle_timeout=args.idle_timeout, total_timeout=args.total_timeout,
        replica_header=not args.no_replica_header, access_log=args.access_log,
        prefix_chars=args.prefix_chars, upstream_keepalive_s=args.upstream_keepalive,
        stream_failover_max=max(args.stream_failover_max, 0),
        stream_failover_bytes=max(args.stream_failover_bytes, 0)),
        tracer=tracer, admission=admission)
    quart = build_quart(table, proxy)
    add_http_errors(quart)
    app = RouterApp(quart, proxy)

    async def before() -> None:
        await proxy.start()
        table.start()
        if admission is not None:
            tasks.supervise("admission-tick", admission.run)
        if publisher is not None:
            tasks.supervise("queue-signal", publisher.run)
        log.info("router listening on %s, policy %s, etcd %s", args.listen, pipeline.name,
                 ",".join(cfg.endpoints))
        log.info("routing policy %s", json.dumps(pipeline.describe(), separators=(",", ":")))

    async def after() -> None:
        await tasks.close()
        if publisher is not None:
            await publisher.stop()
        await table.stop()
        await proxy.close()
        await store.close()
        shutdown_tracing()

    # A worker takes connections once its endpoint table is loaded (its siblings serve
    # meanwhile); a single process answers 503 "not loaded yet" instead.
    run_app(app, listen=args.listen, prog=PROG, before=before, after=after,
            server=args.http_server, warm=lambda: table.loaded)


if __name__ == "__main__":
    main()
