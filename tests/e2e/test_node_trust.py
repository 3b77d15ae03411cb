"""What a node accepts from etcd: engine arguments, listen address, secrets on command lines.

A plan in etcd becomes an engine command line on the node's host, so the node
runs only allowed engine flags, binds engines to its advertise address (never
every interface), and keeps secret flag values out of its log and out of what it
publishes to etcd. Real etcd, a real node process, real (or stand-in) engines.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from devtools.cluster import Cluster, free_port, wait_for
from nebula_common.records import Assignment, PlacementPlan
from tests.e2e.test_node_lifecycle import (
    FAST_SIM,
    endpoint,
    engine_processes,
    node_args,
    node_replicas,
    pid_record,
    put_plan,
    sim_plan,
    uid,
)

SECRET = "sk-engine-key-5e0c2a9f7d13b846"

# Stands in for `vllm serve`: prints its arguments as vLLM does at start, then fails.
ECHO_VLLM = """#!{python}
import sys
print("FAKE-VLLM args: " + " ".join(sys.argv[1:]), flush=True)
sys.exit(3)
"""


def failed(cluster: Cluster, model_uid: str) -> dict[str, object]:
    return wait_for(lambda: (e := endpoint(cluster, model_uid, "r0")) and e["status"] == "failed"
                    and e, 60, "replica reported failed")


def test_engine_args_outside_the_allow_list_are_refused_not_started(cluster: Cluster) -> None:
    m = uid()
    proc, url = cluster.start_node("n1", node_args())
    put_plan(cluster, sim_plan(m, "n1", [free_port()], engine_args=[*FAST_SIM, "--no-such-flag"]))
    ep = failed(cluster, m)
    assert "refused" in ep["reason"] and "--no-such-flag" in ep["reason"], ep["reason"]
    assert "not allowed for engine sim" in ep["reason"] and ep["log_tail"] == ""
    rep = node_replicas(url)[(m, "r0")]
    assert (rep["state"], rep["restarts"], rep["pid"]) == ("failed", 0, None), rep
    assert engine_processes(m) == [] and pid_record(cluster, "n1", m, "r0") is None
    assert f"replica model_uid={m} replica_id=r0 not started" in proc.log()


def test_engines_listen_on_the_advertise_host_not_every_interface(cluster: Cluster) -> None:
    m = uid()
    cluster.start_node("n1", node_args(**{"--engine-host": "0.0.0.0"}))
    put_plan(cluster, sim_plan(m, "n1", [free_port()]))
    [ep] = cluster.wait_ready(m, 1, timeout=60)
    cmd = pid_record(cluster, "n1", m, "r0")["cmd"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"  # the node's --advertise-host
    assert ep["base_url"].startswith("http://127.0.0.1:")


def test_secret_engine_args_stay_out_of_logs_and_etcd(cluster: Cluster, tmp_path: Path) -> None:
    vllm = tmp_path / "vllm"
    vllm.write_text(ECHO_VLLM.format(python=sys.executable))
    vllm.chmod(0o755)
    proc, _url = cluster.start_node("n1", node_args(**{"--vllm-bin": vllm, "--restart-max": 0}))
    m = uid()
    put_plan(cluster, PlacementPlan(model_uid=m, model_name="Org/Model", engine="vllm",
                                    assignments=[Assignment(
                                        replica_id="r0", node_id="n1", port=free_port(),
                                        engine_args=["--api-key", SECRET,
                                                     f"--api-key={SECRET}", "--seed", "1"])]))
    ep = failed(cluster, m)
    assert "FAKE-VLLM args:" in ep["log_tail"]  # the engine did print its arguments
    assert SECRET not in json.dumps(cluster.etcd_items("/endpoints/"))
    assert "--api-key [redacted] --api-key=[redacted] --seed 1" in proc.log()
    assert SECRET not in proc.log()
    log_file = cluster.run_dir / "nodes" / "n1" / "logs" / f"{m}__r0.log"
    header = log_file.read_text().splitlines()[1]
    assert header.startswith("=== ") and "starting:" in header and SECRET not in header
