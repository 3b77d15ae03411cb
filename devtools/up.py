"""``make up``: etcd, scheduler, node, router and gateway as local processes on the seed's ports.

Returns once the gateway answers a chat request for the placed model, then prints how to
call it. Everything runs under ``.run/`` (logs in ``.run/logs``), which each ``make up``
starts afresh; ``make down`` stops it and leaves the logs for a look afterwards.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import sys
import time

from devtools.cluster import REPO, Cluster, group_alive, http_post_json, wait_for

RUN_DIR = REPO / ".run"
DEFAULT_MODELS = {
    "vllm": "Qwen/Qwen2.5-0.5B-Instruct",
    "llamacpp": "SmolLM2-135M-Instruct",
    "sim": "Qwen/Qwen2.5-0.5B-Instruct",
}
READY_TIMEOUT = {"sim": 60.0, "llamacpp": 180.0, "vllm": 1200.0}
PORTS = {"etcd": 2379, "engine": 10814, "scheduler": 10815, "node": 10816,
         "router": 18081, "gateway": 8081}


def model_uid(model_name: str) -> str:
    """``Qwen/Qwen2.5-0.5B-Instruct`` -> ``qwen2_5_0_5b`` (the seed's uid)."""
    base = model_name.rstrip("/").rsplit("/", 1)[-1].lower()
    uid = re.sub(r"[^a-z0-9]+", "_", base).strip("_")
    return uid.removesuffix("_instruct") or "model"


def port_busy(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def already_up() -> bool:
    pidfile = RUN_DIR / "pids.json"
    if not pidfile.exists():
        return False
    try:
        pids = json.loads(pidfile.read_text())
    except ValueError:
        return False
    return any(group_alive(pid) for pid in pids.values())


def usage(model: str) -> str:
    gw = f"http://127.0.0.1:{PORTS['gateway']}"
    chat = json.dumps({"model": model, "messages": [{"role": "user", "content": "Say hello"}]})
    stream = json.dumps({"model": model, "stream": True,
                         "messages": [{"role": "user", "content": "Count to five"}]})
    responses = json.dumps({"model": model, "input": "Write one sentence about etcd."})
    return f"""
Nebula is up: gateway {gw}, router http://127.0.0.1:{PORTS['router']}, \
etcd 127.0.0.1:{PORTS['etcd']}
Logs: {RUN_DIR / 'logs'}    Stop: make down    Status: .venv/bin/nebula status

  curl -s {gw}/v1/models
  curl -s {gw}/v1/chat/completions -H 'content-type: application/json' \\
       -d '{chat}'
  curl -sN {gw}/v1/chat/completions -H 'content-type: application/json' \\
       -d '{stream}'
  curl -s {gw}/v1/responses -H 'content-type: application/json' \\
       -d '{responses}'
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make up")
    parser.add_argument("--engine", choices=sorted(DEFAULT_MODELS), default="llamacpp")
    parser.add_argument("--model", default=None)
    args = parser.parse_args(argv)
    model = args.model or DEFAULT_MODELS[args.engine]

    if already_up():
        print("Nebula is already running (make down stops it).")
        print(usage(model))
        return 0
    busy = [f"{name} {port}" for name, port in PORTS.items() if port_busy(port)]
    if busy:
        print(f"make up: error: ports already in use: {', '.join(busy)}", file=sys.stderr)
        return 1

    # Nothing runs: start from a clean slate, so an earlier run's placements, engine pid
    # files and logs (another engine or model) cannot leak into this one.
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    node_id = socket.gethostname()
    cluster = Cluster(RUN_DIR, etcd_port=PORTS["etcd"])
    started = time.monotonic()
    try:
        print(f"starting etcd on 127.0.0.1:{PORTS['etcd']} (data in {RUN_DIR / 'etcd-data'})")
        cluster.start_etcd()
        print(f"starting node {node_id}, router :{PORTS['router']}, gateway :{PORTS['gateway']}")
        cluster.start_node(node_id, port=PORTS["node"])
        _, router = cluster.start_router(port=PORTS["router"])
        _, gateway = cluster.start_gateway([router], port=PORTS["gateway"])
        uid = model_uid(model)
        sched, _ = cluster.start_scheduler(port=PORTS["scheduler"], args=[
            "--model-uid", uid, "--model-name", model, "--node-id", node_id,
            "--engine", args.engine, "--port", str(PORTS["engine"])])
        placed = wait_for(lambda: next((line for line in sched.log().splitlines()
                                        if line.startswith("placed:")), None),
                          30, "the scheduler's placed: line")
        print(placed)
        print(f"waiting for {model} on {args.engine} to answer (engine log: "
              f"{RUN_DIR / 'nodes' / node_id / 'logs'}) ...")

        def answers() -> bool:
            status, _ = http_post_json(f"{gateway}/v1/chat/completions", {
                "model": model, "max_tokens": 8,
                "messages": [{"role": "user", "content": "Say hello"}]}, timeout=60)
            return status == 200

        wait_for(answers, READY_TIMEOUT[args.engine], f"{model} to answer", interval=1.0)
    except (TimeoutError, RuntimeError) as exc:
        print(f"make up: error: {exc}", file=sys.stderr)
        print(f"logs are in {RUN_DIR / 'logs'}; run make down to stop what started",
              file=sys.stderr)
        return 1
    print(f"ready in {time.monotonic() - started:.1f}s")
    print(usage(model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
