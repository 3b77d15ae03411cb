"""Several hosts for real: compose.multihost.yaml, each container a host on its own address.

Three etcd members, three nodes (sim engines), two schedulers, two routers, a gateway with
both routers. Damage is done the way it happens: a container killed, a host cut off the
network with ``docker network disconnect``. A bounded load driver counts what the clients
saw (tests/chaos/driver.py): sent, succeeded, failed with a clear error, lost; lost must be 0.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from devtools.cluster import wait_for
from tests.chaos.driver import LoadSpec, LoadThread

from .compose import Compose, docker_ready, image_exists

pytestmark = pytest.mark.containers

PROJECT = "nebula-multihost"
FILES = ("compose.yaml", "compose.cpu.yaml", "compose.multihost.yaml")
GATEWAY = "http://127.0.0.1:8081"
ROUTERS = {"router": "http://127.0.0.1:18081", "router2": "http://127.0.0.1:18082"}
MODEL, UID = "nebula-sim", "sim"
MEMBERS = ("etcd", "etcd2", "etcd3")
LEASE_TTL_S = 5


class Hosts:
    """The multi-host bundle, with the questions the scenarios ask of it."""

    def __init__(self) -> None:
        self.compose = Compose(FILES, project=PROJECT)

    def container(self, service: str) -> str:
        return f"{PROJECT}-{service}-1"

    def network(self, name: str) -> str:
        return f"{PROJECT}_{name}"

    def status(self) -> dict[str, Any]:
        out = self.compose.exec("scheduler2", "nebula", "status", "--json")
        result: dict[str, Any] = json.loads(out)
        return result

    def ready_nodes(self) -> dict[str, str]:
        """replica id -> node of every ready replica."""
        return {r["replica_id"]: r["node_id"] for r in self.status()["replicas"]
                if r["model_uid"] == UID and r["state"] == "ready"}

    def etcd_leader(self) -> str:
        out = self.compose.exec("etcd2", "etcdctl", "--endpoints=" + ",".join(
            f"{m}:2379" for m in MEMBERS), "endpoint", "status", "-w", "json")
        rows = json.loads(out)
        for row in rows:
            if row["Status"]["header"]["member_id"] == row["Status"]["leader"]:
                return str(row["Endpoint"]).split(":")[0]
        raise AssertionError(f"no etcd leader in {rows}")

    def load(self, total: int, rate: float = 25.0) -> LoadThread:
        return LoadThread(LoadSpec(GATEWAY, (MODEL,), total=total, concurrency=4, rate=rate,
                                   timeout=20, max_tokens=8)).start()

    def wait_member_healthy(self, member: str) -> None:
        wait_for(lambda: self.compose.ps()[member].get("Health") == "healthy", 60,
                 f"{member} healthy again")


def assert_nothing_lost(load: LoadThread, *, all_succeed: bool = False) -> dict[str, Any]:
    result = load.result()
    summary = result.summary()
    print(summary)
    assert summary["lost"] == 0, result.samples()
    assert summary["sent"] == load.spec.total
    if all_succeed:
        assert summary["succeeded"] == summary["sent"], (summary, result.samples())
    return summary


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    why = docker_ready()
    if why:
        pytest.fail(why)
    for image in ("nebula-node:0.1.0-cpu", "nebula-router:0.1.0", "nebula-scheduler:0.1.0"):
        if not image_exists(image):
            pytest.fail(f"image {image} is missing (run make images)")
    h = Hosts()
    h.compose.down()
    try:
        h.compose.up(timeout=420)
        wait_for(lambda: len(set(h.ready_nodes().values())) == 3, 90,
                 "three ready replicas on three nodes")
        yield h
    except BaseException:
        print(h.compose.logs())
        raise
    finally:
        h.compose.down()


def test_one_etcd_member_then_the_leader_killed_serving_goes_on(hosts: Hosts) -> None:
    regrants = lease_regrants(hosts)
    load = hosts.load(total=400)
    load.wait_done(40)
    follower = next(m for m in MEMBERS if m != hosts.etcd_leader())
    hosts.compose.run("kill", follower)
    load.wait_done(120)
    hosts.compose.run("up", "-d", follower)
    hosts.wait_member_healthy(follower)
    leader = hosts.etcd_leader()
    hosts.compose.run("kill", leader)
    load.wait_done(280)
    hosts.compose.run("up", "-d", leader)
    assert_nothing_lost(load, all_succeed=True)
    hosts.wait_member_healthy(leader)
    # No node lost its lease to the kills, so no replica left the routers' tables (a
    # keepalive that waited on a write stuck on the dead leader let leases expire).
    assert lease_regrants(hosts) == regrants
    assert len(hosts.ready_nodes()) == 3, hosts.status()
    # The routers' watches are back on members with a leader. Each worker has its own
    # (an election used to send them back to the killed member, costing each the whole
    # client timeout there: a CI run found a router still 503 when the next test began).
    for name, url in ROUTERS.items():
        wait_for(lambda u=url: every_worker_ready(u), 30, f"{name}'s /readyz back to 200")


def every_worker_ready(url: str, answers: int = 12) -> bool:
    """``answers`` /readyz in a row say 200, each on a new connection (the kernel spreads
    those over the router's workers): one 503 and the caller polls again."""
    for _ in range(answers):
        r = requests.get(url + "/readyz", timeout=5)
        if r.status_code != 200:
            print(f"{url}/readyz: {r.status_code} {r.text.strip()}")
            return False
    return True


def test_router_cut_off_from_etcd_serves_its_last_table(hosts: Hosts) -> None:
    router, url = "router", ROUTERS["router"]
    wait_for(lambda: every_worker_ready(url), 30, f"{router}'s /readyz at 200 first")
    disconnect(hosts, router, "control")
    try:
        wait_for(lambda: requests.get(url + "/readyz", timeout=5).status_code == 503, 30,
                 "the cut-off router's /readyz to say it lost etcd")
        body = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]}
        for _ in range(20):
            r = requests.post(url + "/v1/chat/completions", json=body, timeout=10)
            assert r.status_code == 200, r.text
        # Something changes while it is cut off: one more replica.
        hosts.compose.exec("scheduler2", "nebula", "scale", UID, "4", "--wait", timeout=120)
    finally:
        reconnect(hosts, router, "control")
    wait_for(lambda: requests.get(url + "/readyz", timeout=5).status_code == 200, 30,
             "/readyz back to 200 after reconnection")

    def caught_up() -> bool:
        rows = requests.get(url + "/debug/endpoints", timeout=5).json()["endpoints"]
        return sum(1 for r in rows if r["model_uid"] == UID and r["status"] == "ready") == 4

    wait_for(caught_up, 30, "the router's table to show the fourth replica")
    hosts.compose.exec("scheduler2", "nebula", "scale", UID, "3", "--wait", timeout=120)


def disconnect(hosts: Hosts, service: str, *networks: str) -> None:
    for net in networks:
        subprocess.run(["docker", "network", "disconnect", hosts.network(net),
                        hosts.container(service)], check=True, timeout=60)


def reconnect(hosts: Hosts, service: str, *networks: str) -> None:
    # The service name is its DNS name on each network (compose sets it as an alias); a node
    # also has its data-plane name, `<node>-data`, on the default network.
    for net in networks:
        aliases = ["--alias", service]
        if service.startswith("node") and net == "default":
            aliases += ["--alias", f"{service}-data"]
        subprocess.run(["docker", "network", "connect", *aliases, hosts.network(net),
                        hosts.container(service)], check=True, timeout=60)


def sim_processes(hosts: Hosts, service: str) -> list[str]:
    """The nebula-sim engines running in one node container (from its /proc)."""
    script = ("import os\n"
              "for p in os.listdir('/proc'):\n"
              "    try:\n        argv = open(f'/proc/{p}/cmdline', 'rb').read().split(b'\\0')\n"
              "    except OSError:\n        continue\n"
              "    if any(a.endswith(b'nebula-sim') for a in argv[:2]):\n"
              "        print(p, b' '.join(argv).decode(errors='replace')[:200])")
    return [ln for ln in hosts.compose.exec(service, "python", "-c", script).splitlines() if ln]


def router_view(url: str) -> dict[str, list[str]]:
    """replica id -> the nodes the router has a ready endpoint for it on."""
    rows = requests.get(url + "/debug/endpoints", timeout=5).json()["endpoints"]
    seen: dict[str, list[str]] = {}
    for r in rows:
        if r["model_uid"] == UID and r["status"] == "ready":
            seen.setdefault(r["replica"], []).append(r["node_id"])
    return seen


def test_node_cut_off_is_replaced_and_stands_down_when_back(hosts: Hosts) -> None:
    before = hosts.ready_nodes()
    victim = before["r0"]
    moved = sorted(r for r, n in before.items() if n == victim)
    load = hosts.load(total=500)
    load.wait_done(40)
    disconnect(hosts, victim, "control", "default")
    cut = time.monotonic()
    try:
        wait_for(lambda: (lambda now: len(now) == 3 and victim not in now.values())(
            hosts.ready_nodes()), LEASE_TTL_S + 5, f"{moved} ready on the other nodes")
        print(f"node cut: replicas moved and ready after {time.monotonic() - cut:.1f}s")
    finally:
        reconnect(hosts, victim, "control", "default")
    back = time.monotonic()
    # Back on the network, the node must stop its engines for the moved replicas and must
    # not re-register them: no replica id is ever served by two nodes, and the table converges.
    doubled: list[dict[str, list[str]]] = []
    while time.monotonic() - back < 20:
        for url in ROUTERS.values():
            view = router_view(url)
            if any(len(nodes) > 1 or victim in nodes for nodes in view.values()):
                doubled.append(view)
        time.sleep(0.2)
    assert not doubled, doubled[:3]
    wait_for(lambda: not sim_processes(hosts, victim), 30,
             f"{victim} to stop its engines for the moved replicas")
    for url in ROUTERS.values():
        wait_for(lambda u=url: sorted(router_view(u)) == ["r0", "r1", "r2"], 30,
                 "every router's table to converge on three replicas")
    assert_nothing_lost(load)


SCHEDULERS = ("scheduler", "scheduler2")
PLAN_SCRIPT = (
    "import asyncio, json\n"
    "from nebula_common.records import PlacementPlan\n"
    "from nebula_common.store import EtcdConfig, EtcdStore\n"
    "async def main():\n"
    "    pw = open('/run/nebula/etcd/nebula-scheduler').read().strip()\n"
    "    s = EtcdStore(EtcdConfig(endpoints=('etcd:2379', 'etcd2:2379', 'etcd3:2379'),"
    " username='nebula-scheduler', password=pw, timeout=3))\n"
    "    kv = await s.get('/placements/sim')\n"
    "    plan = PlacementPlan.from_json(kv.value)\n"
    "    print(json.dumps({'writer': plan.writer, 'revision': kv.mod_revision,"
    " 'replicas': len(plan.assignments)}))\n"
    "    await s.close()\n"
    "asyncio.run(main())\n")
NODES = ("node", "node2", "node3")


def metric_script(port: int, name: str) -> str:
    """Python that prints the value of the unlabelled metric ``name`` on a role's port."""
    return ("import urllib.request\n"
            f"text = urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=3)"
            ".read().decode()\n"
            "print(next((ln.split()[-1] for ln in text.splitlines()"
            f" if ln.startswith('{name} ')), '0'))\n")


LEADER_SCRIPT = metric_script(10815, "nebula_scheduler_leader")
REGRANTS_SCRIPT = metric_script(10816, "nebula_node_lease_regrants_total")


def lease_regrants(hosts: Hosts) -> dict[str, float]:
    """How often each node's etcd lease was lost and granted again."""
    return {node: float(hosts.compose.exec(node, "python", "-c", REGRANTS_SCRIPT).strip())
            for node in NODES}


def plan_state(hosts: Hosts, via: str) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(hosts.compose.exec(via, "python", "-c", PLAN_SCRIPT))
    return state


def leader(hosts: Hosts) -> str | None:
    leaders = [s for s in SCHEDULERS
               if float(hosts.compose.exec(s, "python", "-c", LEADER_SCRIPT).strip()) == 1.0]
    return leaders[0] if len(leaders) == 1 else None


def test_scheduler_leader_cut_off_a_follower_takes_over_and_the_old_one_writes_nothing(
        hosts: Hosts) -> None:
    old = wait_for(lambda: leader(hosts), 30, "one scheduler leading")
    follower = next(s for s in SCHEDULERS if s != old)
    before = plan_state(hosts, follower)
    disconnect(hosts, old, "control")
    try:
        wait_for(lambda: leader_of(hosts, follower), LEASE_TTL_S + 5,
                 f"{follower} to take over")
        # The new leader writes the next plan (one more replica)...
        hosts.compose.exec(follower, "nebula", "scale", UID, "4", "--wait", timeout=120)
        after = plan_state(hosts, follower)
        assert after["replicas"] == 4 and after["revision"] > before["revision"]
        assert after["writer"] and after["writer"] != before["writer"], (before, after)
    finally:
        reconnect(hosts, old, "control")
    # ...and the old leader, back with a lost lease, writes none (its writes are fenced).
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = plan_state(hosts, follower)
        assert now["writer"] == after["writer"], (after, now)
        time.sleep(1)
    hosts.compose.exec(follower, "nebula", "scale", UID, "3", "--wait", timeout=120)


def leader_of(hosts: Hosts, scheduler: str) -> bool:
    return float(hosts.compose.exec(scheduler, "python", "-c", LEADER_SCRIPT).strip()) == 1.0
