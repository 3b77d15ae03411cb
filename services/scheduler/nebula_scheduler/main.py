"""``nebula-scheduler``: the seed's one-shot placement, then the long-running reconciler.

Seed form (docs/architecture.md section 2)::

    nebula-scheduler --model-uid qwen2_5_0_5b --model-name Qwen/Qwen2.5-0.5B-Instruct \\
        --node-id $(hostname) --engine vllm --port 10814 --etcd-endpoints http://127.0.0.1:2379

writes the ModelSpec and its PlacementPlan, prints ``placed: key=/placements/<uid> ...``
and keeps running as the reconciler (leader election; only the leader writes plans).
``--once`` exits after placing. Without ``--model-uid`` it only reconciles.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import sys
import time

from quart import Quart

from nebula_common.config import Parser, add_common_flags, etcd_config, fail
from nebula_common.config import keys as make_keys
from nebula_common.keys import Keys
from nebula_common.logs import setup_logging
from nebula_common.records import ENGINES, ModelSpec, PlacementPlan, identity_conflict
from nebula_common.service import add_basic_routes, bind_socket, run_app
from nebula_common.store import EtcdStore, LeaseKeeper, StoreUnavailable
from nebula_common.tasks import TaskSet
from nebula_common.tracing import setup_tracing, shutdown_tracing

from .autoscale import ScaleConfig
from .autoscaler import Autoscaler
from .election import Election
from .placement import DEFAULT_GRACE_S
from .reconciler import Reconciler, reconcile_view
from .view import ClusterView

PROG = "nebula-scheduler"
log = logging.getLogger("nebula_scheduler")


def build_parser() -> Parser:
    p = Parser(prog=PROG, description="Nebula scheduler: places model replicas on nodes.")
    add_common_flags(p, listen="0.0.0.0:10815")
    p.add_flag("--model-uid", default=None, help="record this model's spec and place it")
    p.add_flag("--model-name", default=None, help="model to serve (e.g. a Hugging Face id)")
    p.add_flag("--engine", default="vllm", choices=list(ENGINES), help="inference engine")
    p.add_flag("--node-id", default=None, help="pin the model to this node")
    p.add_flag("--port", default=10814, type=int, help="engine port of the first replica")
    p.add_flag("--replicas", default=1, type=int, help="number of replicas")
    p.add_flag("--gpus-per-replica", default=0, type=int,
               help="GPUs per replica (GPU engines need at least 1)")
    p.add_flag("--gpu-memory-mb", default=0, type=int,
               help="free memory each of a replica's GPUs must have")
    p.add_flag("--engine-args", default="", help="extra engine arguments (one shell string)")
    p.add_flag("--trust-remote-code", action="store_true",
               help="let the engine run code from the model's repository (vLLM)")
    p.add_flag("--reschedule-grace", default=DEFAULT_GRACE_S, type=float,
               help="seconds a vanished node keeps its replicas before they move")
    p.add_flag("--lease-ttl", default=5, type=int, help="election lease TTL in seconds")
    p.add_flag("--etcd-wait", default=30.0, type=float,
               help="seconds to keep trying an unreachable etcd at start")
    p.add_flag("--autoscale-timing", default="10,30,60,60,300",
               metavar="OUT_AFTER,OUT_COOLDOWN,IN_AFTER,IN_COOLDOWN,IDLE_TO_ZERO",
               help="autoscaler seconds: queue sustained before a scale-out, pause after "
                    "one, calm sustained before a scale-in, pause after one, idle before "
                    "the last replica of a --min 0 model stops (docs/overload.md)")
    p.add_flag("--once", action="store_true", help="place the model and exit")
    return p


def spec_from_args(args: argparse.Namespace) -> ModelSpec:
    try:
        engine_args = shlex.split(args.engine_args or "")
    except ValueError as exc:
        fail(PROG, f"--engine-args: {exc}")
    if args.replicas < 0:
        fail(PROG, "--replicas must be >= 0")
    if args.gpus_per_replica < 0:
        fail(PROG, "--gpus-per-replica must be >= 0")
    if not 1 <= args.port <= 65535:
        fail(PROG, f"--port {args.port} is not a TCP port")
    return ModelSpec(
        model_uid=args.model_uid,
        model_name=args.model_name or args.model_uid,
        engine=args.engine,
        replicas=args.replicas,
        engine_args=engine_args,
        gpus_per_replica=args.gpus_per_replica,
        gpu_memory_mb=args.gpu_memory_mb,
        port=args.port,
        node_ids=[args.node_id] if args.node_id else [],
        trust_remote_code=args.trust_remote_code,
    )


async def connect(args: argparse.Namespace) -> EtcdStore:
    """A store that answered, or a one-line error and exit 1 after ``--etcd-wait``."""
    try:
        config = etcd_config(args)
    except ValueError as exc:
        fail(PROG, str(exc))
    store = EtcdStore(config)
    try:
        await store.wait_until_ready(args.etcd_wait)
    except StoreUnavailable as exc:
        await store.close()
        fail(PROG, str(exc), code=1)
    return store


def placed_line(key: str, plan: PlacementPlan) -> str:
    nodes = sorted({a.node_id for a in plan.assignments})
    line = (f"placed: key={key} version={plan.version} replicas={len(plan.assignments)} "
            f"nodes={','.join(nodes) or '-'}")
    if plan.unplaced:
        line += f" unplaced={len(plan.unplaced)} reason={plan.unplaced[0].reason!r}"
    return line


async def place_seed(args: argparse.Namespace, keys: Keys) -> None:
    """Write the spec, place it (pinned to --node-id if given), print the ``placed:`` line."""
    spec = spec_from_args(args)
    store = await connect(args)
    try:
        specs = (await ClusterView.read(store, keys)).specs
        conflict = identity_conflict(spec.model_uid, spec.model_name, specs.values())
        if conflict:
            fail(PROG, f"cannot record {spec.model_uid!r}: {conflict}", code=1)
        existing = specs.get(spec.model_uid)
        if existing is not None:  # (None too when unreadable: then it is replaced whole)
            spec.created_at = existing.created_at
        await store.put(keys.model(spec.model_uid), spec.to_json())
        for _ in range(5):
            view = await ClusterView.read(store, keys)
            outcome = await reconcile_view(store, keys, view, now=time.time(), last_seen={},
                                           grace=args.reschedule_grace, delete_orphans=False,
                                           only={spec.model_uid})
            unchanged = spec.model_uid not in outcome.result.changed
            if spec.model_uid in outcome.written or (unchanged and spec.model_uid in view.plans):
                plan = view.plans[spec.model_uid]
                break
        else:
            fail(PROG, f"could not write the plan of {spec.model_uid}: kept conflicting", 1)
    except StoreUnavailable as exc:
        fail(PROG, str(exc), code=1)
    finally:
        await store.close()
    print(placed_line(keys.placement(spec.model_uid), plan), flush=True)
    log.info("placed model_uid=%s version=%d", spec.model_uid, plan.version,
             extra={"model_uid": spec.model_uid})


class SchedulerService:
    """The long-running part: lease, election, mirrors and the reconcile loop.

    All run in :attr:`tasks`. The reconcile loop and the mirrors restart when they
    crash; the election and the lease keepalive must not die (a scheduler that
    keeps leading without them would write nothing, or write unfenced), so their
    crash stops the process with a non-zero exit.
    """

    def __init__(self, args: argparse.Namespace, keys: Keys):
        self.args = args
        self.keys = keys
        self.stop = asyncio.Event()
        self.tasks = TaskSet("scheduler")
        self.store: EtcdStore | None = None
        self.keeper: LeaseKeeper | None = None
        self.election: Election | None = None
        self.reconciler: Reconciler | None = None

    async def start(self) -> None:
        self.stop = asyncio.Event()
        self.store = await connect(self.args)
        self.keeper = LeaseKeeper(self.store, ttl=max(1, self.args.lease_ttl), tasks=self.tasks)
        await self.keeper.start()
        election = self.election = Election(self.store, self.keys, self.keeper,
                                            retry_interval=min(1.0, self.args.lease_ttl / 3),
                                            tasks=self.tasks)
        reconciler = self.reconciler = Reconciler(
            self.store, self.keys, grace=self.args.reschedule_grace,
            is_leader=lambda: election.leader, fence=election.fence, tasks=self.tasks,
            autoscaler=Autoscaler(ScaleConfig.parse(self.args.autoscale_timing)))
        reconciler.start()
        self.tasks.supervise("election", lambda: election.run(self.stop), restart=False)
        self.tasks.supervise("reconcile", lambda: reconciler.run(self.stop))
        log.info("scheduler started", extra={"identity": self.election.identity.decode()})

    async def close(self) -> None:
        self.stop.set()
        await self.tasks.close()  # loops, mirrors and the keepalive: nothing writes from now on
        if self.election:
            await self.election.resign()
        if self.keeper:
            await self.keeper.stop(revoke=True)
        if self.store:
            await self.store.close()
        shutdown_tracing()

    def ready(self) -> tuple[bool, str]:
        if self.reconciler is None or self.election is None:
            return False, "starting"
        if not self.reconciler.synced:
            return False, "syncing with etcd"
        if not all(m.healthy for m in self.reconciler.mirrors):
            return False, "etcd watch broken"
        role = "leader" if self.election.leader else "follower"
        return True, f"ready ({role})"


def build_app(service: SchedulerService) -> Quart:
    app = Quart(PROG)
    add_basic_routes(app, service.ready)

    @app.get("/debug/leader")
    async def leader() -> dict[str, object]:
        election = service.election
        return {
            "leader": bool(election and election.leader),
            "identity": election.identity.decode() if election else "",
            "current_leader": election.current_leader if election else "",
        }

    return app


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        ScaleConfig.parse(args.autoscale_timing)
    except ValueError as exc:
        fail(PROG, f"--autoscale-timing: {exc}")
    setup_logging("scheduler", args.log_level, args.log_format)
    setup_tracing("scheduler")
    keys = make_keys(args)
    if not args.once:
        # A busy --listen port is reported first (one line, non-zero), before any etcd
        # wait; run_app binds it again for real once the seed placement is done.
        bind_socket(args.listen, PROG).close()
    if args.model_uid:
        if not args.model_name:
            fail(PROG, "--model-name is required with --model-uid")
        asyncio.run(place_seed(args, keys))
        if args.once:
            shutdown_tracing()
            return
    elif args.once:
        fail(PROG, "--once needs --model-uid")
    else:
        # Fail fast (one line, exit 1) when etcd is down for the whole --etcd-wait.
        asyncio.run(_check_etcd(args))
    service = SchedulerService(args, keys)
    run_app(build_app(service), listen=args.listen, prog=PROG,
            before=service.start, after=service.close, tasks=service.tasks)
    sys.exit(0)


async def _check_etcd(args: argparse.Namespace) -> None:
    store = await connect(args)
    await store.close()


if __name__ == "__main__":
    main()
