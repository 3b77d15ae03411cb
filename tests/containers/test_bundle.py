"""The bundle as a user runs it: ``docker compose -f compose.yaml -f compose.cpu.yaml up``.

Images come from ``make images`` (the Makefile builds them before this suite; here their
absence is a failure, never a skip). The bundle runs under its own project name, exactly as
typed, on the documented ports published on 127.0.0.1, with llama.cpp serving SmolLM2 on the
CPU. Tests run in file order: the destructive ones (router restart, node kill) come last.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import openai
import pytest
import requests

from devtools.cluster import wait_for

from .compose import Compose, docker_ready, image_exists

pytestmark = pytest.mark.containers

FILES = ("compose.yaml", "compose.cpu.yaml")
GATEWAY = "http://127.0.0.1:8081"
MODEL = "SmolLM2-135M-Instruct"
PUBLISHED = {"gateway": 8081, "router": 18081, "etcd": 2379, "engine": 10814, "prometheus": 9090}
IMAGES = ("nebula-scheduler:0.1.0", "nebula-router:0.1.0", "nebula-gateway:0.1.0",
          "nebula-node:0.1.0-cpu", "quay.io/coreos/etcd:v3.5.17", "prom/prometheus:v2.55.1")
HEALTHY = ("etcd", "scheduler", "node", "router", "gateway", "prometheus")
LEASE_TTL_S = 5  # the node's default --lease-ttl, which compose.yaml keeps


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def bundle() -> Iterator[Compose]:
    why = docker_ready()
    if why:
        pytest.fail(why)
    missing = [name for name in IMAGES if not image_exists(name)]
    if missing:
        pytest.fail(f"images missing: {', '.join(missing)} (run make images)")
    compose = Compose(FILES)
    compose.down()  # a run that died half-way must not leave its containers to this one
    taken = {name: port for name, port in PUBLISHED.items() if _port_taken(port)}
    if taken:
        pytest.fail(f"the bundle publishes fixed ports and these are taken on 127.0.0.1: {taken}")
    try:
        compose.up(timeout=420)
        yield compose
    except BaseException:
        print(compose.logs())
        raise
    finally:
        compose.down()


def client(max_retries: int = 2) -> openai.OpenAI:
    return openai.OpenAI(base_url=GATEWAY + "/v1", api_key="unused", timeout=60,
                         max_retries=max_retries)


def chat_once(c: openai.OpenAI, text: str = "Say hi.") -> str:
    reply = c.chat.completions.create(model=MODEL, max_tokens=8, temperature=0,
                                      messages=[{"role": "user", "content": text}])
    return reply.choices[0].message.content or ""


def engine_processes(compose: Compose) -> list[str]:
    """Command lines of the llama.cpp servers inside the node container (from its /proc)."""
    script = ("import os\n"
              "for p in os.listdir('/proc'):\n"
              "    try:\n        argv = open(f'/proc/{p}/cmdline', 'rb').read().split(b'\\0')\n"
              "    except OSError:\n        continue\n"
              "    if b'llama_cpp.server' in argv:\n"
              "        print(p, b' '.join(argv).decode(errors='replace')[:160])")
    return [line for line in compose.exec("node", "python", "-c", script).splitlines() if line]


def test_every_service_is_healthy(bundle: Compose) -> None:
    states = bundle.ps()
    for service in HEALTHY:
        assert states[service]["Health"] == "healthy", (service, states[service])
    assert "grafana" not in states, "grafana is in the `grafana` profile (no image here)"


def test_openai_client_gets_real_tokens(bundle: Compose) -> None:
    c = client()
    first = wait_for(lambda: chat_once(c), 180, "a first chat answer through the gateway", 2)
    assert first.strip()

    parts = [chunk.choices[0].delta.content or "" for chunk in c.chat.completions.create(
        model=MODEL, max_tokens=16, temperature=0, stream=True,
        messages=[{"role": "user", "content": "Count to five."}]) if chunk.choices]
    assert "".join(parts).strip() and len(parts) > 2

    events = list(c.responses.create(model=MODEL, input="Name a colour.", stream=True,
                                     max_output_tokens=16))
    kinds = [e.type for e in events]
    # 16 tokens may cut the answer: then the last event says incomplete, as OpenAI's does.
    assert kinds[0] == "response.created"
    assert kinds[-1] in ("response.completed", "response.incomplete"), kinds[-1]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas.strip()


def test_nebula_status_inside_the_scheduler(bundle: Compose) -> None:
    out = bundle.exec("scheduler", "nebula", "status")
    line = next((ln for ln in out.splitlines() if "smollm2_135m" in ln), "")
    assert line, out
    assert "ready" in out, out


def test_etcd_gives_each_role_only_its_keys(bundle: Compose) -> None:
    """Auth is on in the bundle: the router's own user, from inside its container, may read
    placements but write nothing, and no user at all gets nothing."""
    script = (
        "import asyncio, sys\n"
        "from nebula_common.store import EtcdConfig, EtcdStore\n"
        "async def main(user):\n"
        "    pw = open('/run/nebula/etcd/nebula-router').read().strip() if user else None\n"
        "    s = EtcdStore(EtcdConfig(endpoints=('etcd:2379',), username=user, password=pw,"
        " timeout=3))\n"
        "    out = []\n"
        "    for op in (lambda: s.get_prefix('/placements/'), lambda: s.put('/models/x', b'{}')):\n"
        "        try:\n            await op(); out.append('ok')\n"
        "        except Exception as exc:\n            out.append('denied' if 'permission denied'"
        " in str(exc) or 'user name' in str(exc) else repr(exc))\n"
        "    await s.close(); print(' '.join(out))\n"
        "asyncio.run(main(sys.argv[1] or None))\n")
    as_router = bundle.exec("router", "python", "-c", script, "nebula-router").split()
    assert as_router == ["ok", "denied"], as_router
    anonymous = bundle.exec("router", "python", "-c", script, "").split()
    assert anonymous == ["denied", "denied"], anonymous


def test_router_restart_loses_no_request(bundle: Compose) -> None:
    """README promise: while no router answers the gateway says 503 + Retry-After, so a
    client retrying as the OpenAI SDKs do (here max_retries=6, honouring Retry-After)
    loses no request across ``docker compose restart router``."""
    c = client(max_retries=6)
    chat_once(c)
    sent = ok = 0
    failures: list[str] = []
    restarted = threading.Event()

    def restart() -> None:
        bundle.run("restart", "router", timeout=120)
        restarted.set()

    worker = threading.Thread(target=restart)
    deadline = time.monotonic() + 150
    worker.start()
    after = 0
    while time.monotonic() < deadline and after < 5 and sent < 400:
        sent += 1
        try:
            chat_once(c)
            ok += 1
        except openai.APIError as exc:
            failures.append(repr(exc))
        if restarted.is_set():
            after += 1
    worker.join(timeout=130)
    assert restarted.is_set(), "docker compose restart router did not finish"
    print(f"router restart: sent={sent} succeeded={ok} failed={len(failures)}")
    assert not failures, failures[:3]
    assert after >= 5, "the loop ended before five requests after the restart"


def test_node_stops_cleanly_and_restarts_with_one_engine(bundle: Compose) -> None:
    """SIGTERM (``stop``/``restart``) drains: the agent stops its engine's process group and
    exits 0 well inside stop_grace_period; back up, exactly one engine runs."""
    bundle.run("stop", "node", timeout=120)
    state = subprocess.run(["docker", "inspect", "-f", "{{.State.ExitCode}}",
                            "nebula-node-1"], capture_output=True, text=True, timeout=30)
    assert state.stdout.strip() == "0", state.stdout + state.stderr
    bundle.run("up", "-d", "--wait", "node", timeout=180)
    bundle.run("restart", "node", timeout=180)
    wait_for(lambda: chat_once(client(0)), 90, "a chat answer after `restart node`", 1)
    engines = engine_processes(bundle)
    assert len(engines) == 1, engines


def test_killed_node_answers_503_then_recovers(bundle: Compose) -> None:
    chat_once(client())
    bundle.run("kill", "node")
    killed = time.monotonic()

    slowest = 0.0

    def answered_503() -> bool:
        nonlocal slowest
        started = time.monotonic()
        r = requests.post(GATEWAY + "/v1/chat/completions", timeout=10, json={
            "model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]})
        slowest = max(slowest, time.monotonic() - started)
        return r.status_code == 503 and "retry-after" in r.headers

    wait_for(answered_503, LEASE_TTL_S + 2, "503 with Retry-After after the node was killed",
             0.25)
    assert slowest < 5, f"an answer took {slowest:.1f}s while the node was gone"
    print(f"node kill: 503 + Retry-After after {time.monotonic() - killed:.1f}s")

    bundle.run("up", "-d", "node", timeout=120)
    revived = time.monotonic()
    wait_for(lambda: chat_once(client(0)), 60, "a chat answer after `up -d node`", 1)
    print(f"node back: serving {time.monotonic() - revived:.1f}s after up -d node")
    engines = engine_processes(bundle)
    assert len(engines) == 1, engines
