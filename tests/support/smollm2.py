"""A whole cluster serving SmolLM2-135M on llama.cpp: etcd, node, router, gateway, scheduler."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devtools.cluster import Cluster, free_port, http_get, wait_for
from tests.support import needs

MODEL = "SmolLM2-135M-Instruct"
MODEL_UID = "smollm2_135m"


@contextmanager
def smollm2_cluster(run_dir: Path, engine_args: str = "") -> Iterator[str]:
    """The gateway's base URL once it lists the model; everything stopped afterwards.
    ``engine_args``: the placement's (one shell string, e.g. ``--embedding True``)."""
    needs.module("llama_cpp", "make llamacpp builds and installs llama-cpp-python")
    cluster = Cluster(run_dir)
    try:
        cluster.start_etcd()
        cluster.start_node("cpu-node")
        _, router = cluster.start_router()
        _, gateway = cluster.start_gateway([router])
        cluster.start_scheduler(args=["--model-uid", MODEL_UID, "--model-name", MODEL,
                                      "--node-id", "cpu-node", "--engine", "llamacpp",
                                      "--port", str(free_port()),
                                      *(["--engine-args", engine_args] if engine_args else [])])
        cluster.wait_ready(MODEL_UID, 1, timeout=180)
        wait_for(lambda: MODEL.encode() in http_get(f"{gateway}/v1/models")[1], 20,
                 "model listed by the gateway")
        yield gateway
    finally:
        cluster.stop_all(grace=10)
