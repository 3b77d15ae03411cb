"""``nebula``: the operator CLI. Writes desired state to etcd; the scheduler does the rest.

Every failure is one line on stderr and exit code 1 (2 for bad usage); never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from nebula_common.config import Parser, add_etcd_flags, etcd_config
from nebula_common.keys import Keys
from nebula_common.records import (
    ENGINES,
    Cordon,
    ModelSpec,
    RecordError,
    ScaleDecision,
    identity_conflict,
    ready_replicas,
    serves,
)
from nebula_common.store import EtcdStore, StoreUnavailable

from . import keys_cli
from .placement import replica_number
from .view import ClusterView

PROG = "nebula"


class CliError(Exception):
    """A one-line, user-facing error."""


def die(message: str, code: int = 1) -> NoReturn:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def build_parser() -> Parser:
    p = Parser(prog=PROG, description="Operate a Nebula cluster (state lives in etcd).")
    add_etcd_flags(p, timeout=2.0)
    # The same flags after the command (`nebula status --etcd-endpoints ...`); SUPPRESS keeps
    # a subcommand from overwriting what was given before it with its defaults.
    after = Parser(add_help=False)
    add_etcd_flags(after, timeout=2.0)
    for action in after._actions:
        action.default = argparse.SUPPRESS
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    def command(name: str, help: str) -> Parser:
        return sub.add_parser(name, help=help, parents=[after])

    s = command("status", "nodes, models and replicas")
    s.add_argument("--json", action="store_true", help="machine-readable output")

    d = command("deploy", "declare a model deployment")
    d.add_argument("model_uid")
    d.add_argument("--model", required=True, help="model name (e.g. a Hugging Face id)")
    d.add_argument("--engine", required=True, choices=list(ENGINES))
    d.add_argument("--replicas", type=int, default=None,
                   help="replica count (default 1; with --max: the starting count)")
    d.add_argument("--min", type=int, default=None, dest="min_replicas",
                   help="autoscale: at least this many replicas (0: scale to zero when idle)")
    d.add_argument("--max", type=int, default=0, dest="max_replicas",
                   help="autoscale up to this many replicas on the routers' queues (0: off)")
    d.add_argument("--gpus-per-replica", type=int, default=0)
    d.add_argument("--gpu-memory-mb", type=int, default=0)
    d.add_argument("--port", type=int, default=10814, help="engine port of the first replica")
    d.add_argument("--engine-args", default="", help="extra engine arguments (one shell string)")
    d.add_argument("--node", action="append", default=[], help="pin to this node (repeatable)")
    d.add_argument("--trust-remote-code", action="store_true",
                   help="let the engine run code from the model's repository (vLLM)")
    d.add_argument("--wait", action="store_true", help="wait until every replica is ready")
    d.add_argument("--timeout", type=float, default=300.0, help="seconds --wait waits")

    sc = command("scale", "set a model's replica count (pins it: autoscaling off)")
    sc.add_argument("model_uid")
    sc.add_argument("replicas", type=int)
    sc.add_argument("--wait", action="store_true", help="wait until that many are ready")
    sc.add_argument("--timeout", type=float, default=300.0)

    u = command("undeploy", "remove a model deployment")
    u.add_argument("model_uid")

    dr = command("drain", "move every replica off a node (cordon it)")
    dr.add_argument("node_id")
    dr.add_argument("--wait", action="store_true", help="wait until the node hosts nothing")
    dr.add_argument("--timeout", type=float, default=300.0)

    uc = command("uncordon", "let a drained node take replicas again")
    uc.add_argument("node_id")
    keys_cli.add_commands(command)
    return p


# -- formatting ----------------------------------------------------------------------------
def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def scale_text(d: ScaleDecision, now: float) -> str:
    """One autoscale decision for ``nebula status``: "scaled out 1->3 40s ago: 5 waiting..."."""
    verb = ("woke from zero" if d.before == 0 else "scaled to zero" if d.after == 0
            else "scaled out" if d.after > d.before else "scaled in")
    return f"{verb} {d.before}->{d.after} {_age(now - d.decided_at)} ago: {d.reason}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def status_data(view: ClusterView, now: float) -> dict[str, Any]:
    """Everything ``nebula status`` shows, as plain data (the ``--json`` output)."""
    nodes = []
    hosting: dict[str, int] = {}
    for placed in view.plans.values():
        for a in placed.assignments:
            hosting[a.node_id] = hosting.get(a.node_id, 0) + 1
    for node_id in sorted(set(view.nodes) | view.cordoned):
        n = view.nodes.get(node_id)
        nodes.append({
            "node_id": node_id,
            "host": n.advertise_host if n else "",
            "live": n is not None,
            "gpus": len(n.gpus) if n else 0,
            "gpu_names": sorted({g.name for g in n.gpus}) if n else [],
            "engines": list(n.engines) if n else [],
            "age_s": round(now - n.started_at, 1) if n else None,
            "cordoned": node_id in view.cordoned,
            "replicas": hosting.get(node_id, 0),
        })
    models = []
    replicas = []
    for uid in sorted(set(view.specs) | set(view.plans) | view.invalid_plans):
        spec = view.specs.get(uid)
        plan = view.plans.get(uid)
        assignments = plan.assignments if plan else []
        for a in sorted(assignments, key=lambda a: replica_number(a.replica_id)):
            ep = view.endpoints.get((uid, a.replica_id))
            if ep is not None and ep.node_id == a.node_id:
                state, reason = str(ep.status), ep.reason
            else:
                state, reason = "starting", ""
            if a.node_id in view.cordoned and serves(view.endpoints, uid, a):
                reason = reason or "node cordoned: replacement pending"
            if a.node_id not in view.nodes:
                reason = reason or "node not live"
            replicas.append({"model_uid": uid, "replica_id": a.replica_id, "node_id": a.node_id,
                             "port": a.port, "gpu_indices": a.gpu_indices, "state": state,
                             "reason": reason})
        for u in plan.unplaced if plan else []:
            replicas.append({"model_uid": uid, "replica_id": u.replica_id, "node_id": "",
                             "port": None, "gpu_indices": [], "state": "unplaced",
                             "reason": u.reason})
        for f in plan.failures if plan else []:
            # A replica whose restart budget was spent: replaced, or waiting for its backoff.
            then = (f"replaced by {f.replaced_by}" if f.replaced_by
                    else "replacement waits for its backoff")
            replicas.append({"model_uid": uid, "replica_id": f.replica_id,
                             "node_id": f.node_id, "port": None, "gpu_indices": [],
                             "state": "replaced" if f.replaced_by else "failed",
                             "reason": f"restart budget spent: {f.reason}; {then}"})
        models.append({
            "model_uid": uid,
            "model_name": spec.model_name if spec else (plan.model_name if plan else ""),
            "engine": spec.engine if spec else (plan.engine if plan else ""),
            # Autoscaled: what the leader's autoscaler asked for is what the plan holds.
            "desired": (len(assignments) + len(plan.unplaced) if spec and spec.max_replicas
                        and plan else spec.replicas if spec else 0),
            "autoscale": [spec.min_replicas, spec.max_replicas]
            if spec and spec.max_replicas else None,
            "last_scale": scale_text(view.decisions[uid], now)
            if spec and spec.max_replicas and uid in view.decisions else None,
            "placed": len(assignments),
            "ready": len(ready_replicas(plan, view.endpoints)) if plan else 0,
            "plan_version": plan.version if plan else 0,
            "plan_invalid": uid in view.invalid_plans,
            "undeploying": spec is None,
        })
    return {"nodes": nodes, "models": models, "replicas": replicas}


def render_status(data: dict[str, Any]) -> str:
    nodes = _table(
        ["node", "host", "gpus", "engines", "age", "replicas", "cordoned"],
        [[n["node_id"], n["host"] or "-", str(n["gpus"]), ",".join(n["engines"]) or "-",
          _age(n["age_s"]) if n["age_s"] is not None else "gone", str(n["replicas"]),
          "yes" if n["cordoned"] else "no"] for n in data["nodes"]],
    )
    models = _table(
        ["model", "name", "engine", "desired/placed/ready", "version"],
        [[m["model_uid"], m["model_name"], m["engine"],
          f"{m['desired']}/{m['placed']}/{m['ready']}"
          + (" (undeploying)" if m["undeploying"] else "")
          + (f" (autoscale {m['autoscale'][0]}..{m['autoscale'][1]}"
             + (", scaled to zero)" if m["desired"] == 0 else ")") if m.get("autoscale") else "")
          + (" (stored plan invalid)" if m["plan_invalid"] else ""), str(m["plan_version"])]
         for m in data["models"]],
    )
    replicas = _table(
        ["replica", "node", "port", "state", "reason"],
        [[f"{r['model_uid']}/{r['replica_id']}", r["node_id"] or "-",
          str(r["port"]) if r["port"] else "-", r["state"], r["reason"] or ""]
         for r in data["replicas"]],
    )
    scaled = [[m["model_uid"], m.get("last_scale") or "no change yet"]
              for m in data["models"] if m.get("autoscale")]
    autoscale = (f"\n\nAUTOSCALE\n{_table(['model', 'last decision'], scaled)}"
                 if scaled else "")
    return f"NODES\n{nodes}\n\nMODELS\n{models}{autoscale}\n\nREPLICAS\n{replicas}"


# -- commands ------------------------------------------------------------------------------
async def _poll(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await check():
                return
        except StoreUnavailable:
            pass  # a blip while waiting: keep polling until the deadline
        if time.monotonic() >= deadline:
            raise CliError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.5)


async def _ready_count(store: EtcdStore, keys: Keys, uid: str) -> int:
    view = await ClusterView.read(store, keys)
    plan = view.plans.get(uid)
    return len(ready_replicas(plan, view.endpoints)) if plan else 0


async def cmd_status(store: EtcdStore, keys: Keys, args: argparse.Namespace) -> None:
    view = await ClusterView.read(store, keys)
    data = status_data(view, time.time())
    print(json.dumps(data, indent=2) if args.json else render_status(data))


def _scale_bounds(args: argparse.Namespace) -> tuple[int, int, int]:
    """(replicas, min, max) from deploy's flags; CliError when they do not fit."""
    hi = args.max_replicas
    lo = args.min_replicas if args.min_replicas is not None else min(1, hi)
    if hi < 0 or lo < 0:
        raise CliError("--min and --max must be >= 0")
    if hi == 0 and args.min_replicas is not None:
        raise CliError("--min needs --max (the autoscaler's upper bound)")
    if hi and lo > hi:
        raise CliError(f"--min {lo} is above --max {hi}")
    replicas = args.replicas if args.replicas is not None else (max(lo, 1) if hi else 1)
    if hi and not lo <= replicas <= hi:
        raise CliError(f"--replicas {replicas} is outside --min {lo} .. --max {hi}")
    return replicas, lo, hi


async def cmd_deploy(store: EtcdStore, keys: Keys, args: argparse.Namespace) -> None:
    args.replicas, lo, hi = _scale_bounds(args)
    if args.replicas < 0 or args.gpus_per_replica < 0:
        raise CliError("--replicas and --gpus-per-replica must be >= 0")
    if not 1 <= args.port <= 65535:
        raise CliError(f"--port {args.port} is not a TCP port")
    try:
        engine_args = shlex.split(args.engine_args)
    except ValueError as exc:
        raise CliError(f"--engine-args: {exc}") from None
    spec = ModelSpec(model_uid=args.model_uid, model_name=args.model, engine=args.engine,
                     replicas=args.replicas, engine_args=engine_args,
                     gpus_per_replica=args.gpus_per_replica, gpu_memory_mb=args.gpu_memory_mb,
                     port=args.port, node_ids=list(args.node),
                     trust_remote_code=args.trust_remote_code, min_replicas=lo,
                     max_replicas=hi)
    specs = (await ClusterView.read(store, keys)).specs
    conflict = identity_conflict(spec.model_uid, spec.model_name, specs.values())
    if conflict:
        raise CliError(f"cannot deploy {spec.model_uid!r}: {conflict}")
    existing = specs.get(spec.model_uid)
    if existing is not None:  # (None too when unreadable: then it is replaced whole)
        spec.created_at = existing.created_at
    await store.put(keys.model(spec.model_uid), spec.to_json())
    print(f"deployed: key={keys.model(spec.model_uid)} engine={spec.engine} "
          f"replicas={spec.replicas}" + (f" autoscale={lo}..{hi}" if hi else ""), flush=True)
    if args.wait:
        await _wait_ready(store, keys, spec.model_uid, spec.replicas, args.timeout)


async def _wait_ready(store: EtcdStore, keys: Keys, uid: str, n: int, timeout: float) -> None:
    async def enough() -> bool:
        return await _ready_count(store, keys, uid) >= n
    await _poll(enough, timeout, f"{n} ready replicas of {uid}")
    print(f"ready: {uid} {n}/{n}", flush=True)


async def cmd_scale(store: EtcdStore, keys: Keys, args: argparse.Namespace) -> None:
    if args.replicas < 0:
        raise CliError("replicas must be >= 0")
    key = keys.model(args.model_uid)
    for _ in range(10):
        current = await store.get(key)
        if current is None:
            raise CliError(f"unknown model {args.model_uid!r} (see `nebula status`)")
        try:
            spec = ModelSpec.from_json(current.value)
        except RecordError as exc:
            raise CliError(f"stored spec of {args.model_uid!r} is invalid: {exc}") from None
        old = spec.replicas
        spec.replicas = args.replicas
        spec.min_replicas = spec.max_replicas = 0  # a count set by hand is pinned
        if await store.put_if_revision(key, spec.to_json(), current.mod_revision):
            print(f"scaled: {args.model_uid} {old} -> {args.replicas}", flush=True)
            break
    else:
        raise CliError(f"could not update {args.model_uid!r}: it kept changing under us")
    if args.wait:
        await _wait_ready(store, keys, args.model_uid, args.replicas, args.timeout)


async def cmd_undeploy(store: EtcdStore, keys: Keys, args: argparse.Namespace) -> None:
    if not await store.delete(keys.model(args.model_uid)):
        raise CliError(f"unknown model {args.model_uid!r} (see `nebula status`)")
    await store.delete(keys.scale_decision(args.model_uid))  # its autoscale history
    print(f"undeployed: {args.model_uid} (the scheduler removes its plan; nodes drain it)",
          flush=True)


async def _known_node(store: EtcdStore, keys: Keys, node_id: str) -> bool:
    view = await ClusterView.read(store, keys)
    return node_id in view.nodes or node_id in view.cordoned or any(
        a.node_id == node_id for p in view.plans.values() for a in p.assignments)


async def cmd_drain(store: EtcdStore, keys: Keys, args: argparse.Namespace) -> None:
    if not await _known_node(store, keys, args.node_id):
        raise CliError(f"unknown node {args.node_id!r} (see `nebula status`)")
    await store.put(keys.cordon(args.node_id), Cordon(node_id=args.node_id).to_json())
    print(f"cordoned: {args.node_id} (the scheduler moves its replicas elsewhere)", flush=True)
    if args.wait:
        async def empty() -> bool:
            view = await ClusterView.read(store, keys)
            return not any(a.node_id == args.node_id
                           for p in view.plans.values() for a in p.assignments)
        await _poll(empty, args.timeout, f"node {args.node_id} to host no replica")
        print(f"drained: {args.node_id}", flush=True)


async def cmd_uncordon(store: EtcdStore, keys: Keys, args: argparse.Namespace) -> None:
    if await store.delete(keys.cordon(args.node_id)):
        print(f"uncordoned: {args.node_id}", flush=True)
        return
    if not await _known_node(store, keys, args.node_id):
        raise CliError(f"unknown node {args.node_id!r} (see `nebula status`)")
    print(f"{args.node_id} was not cordoned", flush=True)


COMMANDS: dict[str, Callable[[EtcdStore, Keys, argparse.Namespace], Awaitable[None]]] = {
    "status": cmd_status,
    "deploy": cmd_deploy,
    "scale": cmd_scale,
    "undeploy": cmd_undeploy,
    "drain": cmd_drain,
    "uncordon": cmd_uncordon,
    "keys": keys_cli.cmd_keys,
}


async def run(args: argparse.Namespace) -> None:
    try:
        config = etcd_config(args)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    store = EtcdStore(config)
    try:
        # A few seconds at most: an operator wants to know now that etcd is down.
        await store.wait_until_ready(min(3.0, max(config.timeout, 0.5)))
        await COMMANDS[args.command](store, Keys(args.etcd_prefix or ""), args)
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "usage":  # reads the gateways' state store, not etcd
            keys_cli.cmd_usage(args)
        else:
            asyncio.run(run(args))
    except (CliError, keys_cli.KeysCliError) as exc:
        die(str(exc))
    except StoreUnavailable as exc:
        die(str(exc))
    except KeyboardInterrupt:
        die("interrupted", 130)
    except Exception as exc:  # the contract: one line, never a traceback
        die(f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
