"""``make up``: etcd, scheduler, node, router and gateway as local processes on the seed's ports.

Returns once the gateway answers a chat request for the placed model, then prints how to
call it. Everything runs under ``.run/`` (logs in ``.run/logs``), which each ``make up``
starts afresh; ``make down`` stops it and leaves the logs for a look afterwards.
``--port gateway=8091`` (``make up PORTS="gateway=8091"``) moves one service off its seed
port; ``--run-dir`` (``RUN_DIR=``) runs a second cluster beside the first.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from devtools.cluster import REPO, Cluster, group_alive, http_post_json, wait_for
from devtools.step import PROGRESS_EVERY_S, elapsed


def request_path_workers(cpus: int) -> int:
    """Router and gateway processes each (``--workers``): the engine and the clients need
    cores too, so one per two cores, at most 4 (1 on a 2-core laptop)."""
    return max(1, min(4, cpus // 2))


RUN_DIR = REPO / ".run"
DEFAULT_MODELS = {
    "vllm": "Qwen/Qwen2.5-0.5B-Instruct",
    "llamacpp": "SmolLM2-135M-Instruct",
    "sim": "Qwen/Qwen2.5-0.5B-Instruct",
}
READY_TIMEOUT = {"sim": 60.0, "llamacpp": 180.0, "vllm": 1200.0}
ENGINE_ARGS = {"llamacpp": "--embedding True"}
"""What each engine is placed with: llama.cpp serves embeddings too (the node starts it with
a mean pooling, one vector per input) so that every call printed is served."""
EMBEDS = frozenset({"llamacpp", "sim"})
"""Engines whose default model serves /v1/embeddings (vLLM's generates only)."""
PORTS = {"etcd": 2379, "engine": 10814, "scheduler": 10815, "node": 10816,
         "router": 18081, "gateway": 8081}


def model_uid(model_name: str) -> str:
    """``Qwen/Qwen2.5-0.5B-Instruct`` -> ``qwen2_5_0_5b`` (the seed's uid)."""
    base = model_name.rstrip("/").rsplit("/", 1)[-1].lower()
    uid = re.sub(r"[^a-z0-9]+", "_", base).strip("_")
    return uid.removesuffix("_instruct") or "model"


def chosen_ports(specs: Sequence[str]) -> dict[str, int]:
    """The seed's ports with ``name=port`` overrides applied; ValueError names a bad one."""
    ports = dict(PORTS)
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or name not in PORTS:
            raise ValueError(f"--port takes NAME=PORT with NAME one of {', '.join(PORTS)}: "
                             f"{spec!r}")
        if not value.isdigit() or not 0 < int(value) < 65536:
            raise ValueError(f"not a TCP port: {spec!r}")
        ports[name] = int(value)
    clashes = sorted({p for p in ports.values() if list(ports.values()).count(p) > 1})
    if clashes:
        raise ValueError(f"two services on one port: {', '.join(map(str, clashes))}")
    return ports


def port_busy(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def already_up(run_dir: Path) -> bool:
    pidfile = run_dir / "pids.json"
    if not pidfile.exists():
        return False
    try:
        pids = json.loads(pidfile.read_text())
    except ValueError:
        return False
    return any(group_alive(pid) for pid in pids.values())


def usage(model: str, ports: dict[str, int], run_dir: Path, embeddings: bool = False) -> str:
    gw = f"http://127.0.0.1:{ports['gateway']}"
    chat = json.dumps({"model": model, "messages": [{"role": "user", "content": "Say hello"}]})
    stream = json.dumps({"model": model, "stream": True,
                         "messages": [{"role": "user", "content": "Count to five"}]})
    responses = json.dumps({"model": model, "input": "Write one sentence about etcd."})
    embed = json.dumps({"model": model, "input": ["first text", "second text"]})
    embeddings_call = (f"""  curl -s {gw}/v1/embeddings -H 'content-type: application/json' \\
       -d '{embed}'
""" if embeddings else "")
    status = ".venv/bin/nebula status"
    if ports["etcd"] != PORTS["etcd"]:
        status += f" --etcd-endpoints 127.0.0.1:{ports['etcd']}"
    stop = "make down" if run_dir.resolve() == RUN_DIR else f"make down RUN_DIR={run_dir}"
    return f"""
Nebula is up: gateway {gw}, router http://127.0.0.1:{ports['router']}, \
etcd 127.0.0.1:{ports['etcd']}
Logs: {run_dir / 'logs'}    Stop: {stop}    Status: {status}

  curl -s {gw}/v1/models
  curl -s {gw}/v1/chat/completions -H 'content-type: application/json' \\
       -d '{chat}'
  curl -sN {gw}/v1/chat/completions -H 'content-type: application/json' \\
       -d '{stream}'
  curl -s {gw}/v1/responses -H 'content-type: application/json' \\
       -d '{responses}'
{embeddings_call}"""


def wait_showing_progress(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """``wait_for`` that prints the elapsed time every ``PROGRESS_EVERY_S`` (engines take
    minutes to load); TimeoutError after ``timeout`` as ``wait_for`` raises it."""
    started = time.monotonic()
    while True:
        left = timeout - (time.monotonic() - started)
        try:
            wait_for(predicate, min(PROGRESS_EVERY_S, left), what, interval=1.0)
            return
        except TimeoutError:
            if left <= PROGRESS_EVERY_S:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}") from None
            print(f"  waiting for {what} ... {elapsed(time.monotonic() - started)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make up")
    parser.add_argument("--engine", choices=sorted(DEFAULT_MODELS), default="llamacpp")
    parser.add_argument("--model", default=None)
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR,
                        help="where processes keep state and logs (make down --run-dir)")
    parser.add_argument("--port", action="append", default=[], metavar="NAME=PORT",
                        help=f"move one service off its seed port ({', '.join(PORTS)})")
    args = parser.parse_args(argv)
    try:
        ports = chosen_ports(args.port)
    except ValueError as exc:
        parser.error(str(exc))
    model = args.model or DEFAULT_MODELS[args.engine]
    run_dir: Path = args.run_dir.resolve()

    if already_up(run_dir):
        print("Nebula is already running (make down stops it).")
        print(usage(model, ports, run_dir, args.engine in EMBEDS))
        return 0
    busy = [f"{name} {port}" for name, port in ports.items() if port_busy(port)]
    if busy:
        print(f"make up: error: ports already in use: {', '.join(busy)}; stop what holds "
              f"them or move Nebula, e.g. make up PORTS=\"{busy[0].split()[0]}=...\"",
              file=sys.stderr)
        return 1

    # Nothing runs: start from a clean slate, so an earlier run's placements, engine pid
    # files and logs (another engine or model) cannot leak into this one.
    shutil.rmtree(run_dir, ignore_errors=True)
    node_id = socket.gethostname()
    cluster = Cluster(run_dir, etcd_port=ports["etcd"])
    started = time.monotonic()
    try:
        print(f"starting etcd on 127.0.0.1:{ports['etcd']} (data in {run_dir / 'etcd-data'})")
        cluster.start_etcd()
        workers = ["--workers", str(request_path_workers(os.cpu_count() or 1))]
        print(f"starting node {node_id}, router :{ports['router']}, gateway :{ports['gateway']}"
              f" ({workers[1]} worker(s) each)")
        cluster.start_node(node_id, port=ports["node"])
        _, router = cluster.start_router(port=ports["router"], args=workers)
        _, gateway = cluster.start_gateway([router], port=ports["gateway"], args=workers)
        uid = model_uid(model)
        sched, _ = cluster.start_scheduler(port=ports["scheduler"], args=[
            "--model-uid", uid, "--model-name", model, "--node-id", node_id,
            "--engine", args.engine, "--port", str(ports["engine"]),
            *(["--engine-args", ENGINE_ARGS[args.engine]] if args.engine in ENGINE_ARGS
              else [])])
        placed = wait_for(lambda: next((line for line in sched.log().splitlines()
                                        if line.startswith("placed:")), None),
                          30, "the scheduler's placed: line")
        print(placed)
        print(f"waiting for {model} on {args.engine} to answer (engine log: "
              f"{run_dir / 'nodes' / node_id / 'logs'}) ...", flush=True)

        def answers() -> bool:
            status, _ = http_post_json(f"{gateway}/v1/chat/completions", {
                "model": model, "max_tokens": 8,
                "messages": [{"role": "user", "content": "Say hello"}]}, timeout=60)
            return status == 200

        wait_showing_progress(answers, READY_TIMEOUT[args.engine], f"{model} to answer")
    except (TimeoutError, RuntimeError) as exc:
        print(f"make up: error: {exc}", file=sys.stderr)
        print(f"logs are in {run_dir / 'logs'}; run make down to stop what started",
              file=sys.stderr)
        return 1
    print(f"ready in {time.monotonic() - started:.1f}s")
    print(usage(model, ports, run_dir, args.engine in EMBEDS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
