"""One cluster for the client tests: etcd, sim engines, a router and gateways, as processes.

Sims are registered the way a node would (tests/e2e/test_gateway.py's ``start_sim``); one is
registered as engine ``llamacpp`` so that what has no /tokenize is exercised too. The keyed
gateway takes two keys: one unlimited, one at one request a minute (for 429s).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.cluster import Cluster, http_get, wait_for
from tests.e2e.test_gateway import start_sim, wait_router_ready

MODEL = "Qwen/Qwen2.5-0.5B-Instruct"  # engine sim: /tokenize, native Responses
NO_TOKENIZE = "tiny/no-tokenize"  # registered as llamacpp: no /tokenize
CUT = "cut/model"  # its streams are cut by the engine after a few frames
KEY = "sk-clients-0123456789"
SLOW_KEY = "sk-clients-rpm1-0123456789"


@pytest.fixture(scope="session")
def nebula(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    cluster = Cluster(tmp_path_factory.mktemp("clients") / "run")
    try:
        cluster.start_etcd()
        sims = {MODEL: start_sim(cluster, "clients-sim", MODEL, "sim", "--output-tokens", "12",
                                 "--itl-ms", "2"),
                NO_TOKENIZE: start_sim(cluster, "clients-llama", NO_TOKENIZE, "llamacpp",
                                       "--output-tokens", "8"),
                CUT: start_sim(cluster, "clients-cut", CUT, "sim", "--stream-cut-after", "4",
                               "--itl-ms", "2")}
        wait_router_ready()
        _, router = cluster.start_router()
        wait_for(lambda: len(json.loads(http_get(f"{router}/v1/models")[1])["data"])
                 == len(sims), 30, "router sees every model")
        keyfile = Path(cluster.run_dir) / "client-keys.txt"
        keyfile.write_text("".join(f"{hashlib.sha256(k.encode()).hexdigest()} {name}\n"
                                   for k, name in ((KEY, "clients"),
                                                   (SLOW_KEY, "clients-slow rpm=1"))))
        _, gateway = cluster.start_gateway([router], name="clients-gateway",
                                           args=["--api-keys-file", str(keyfile)])
        yield {"cluster": cluster, "gateway": gateway, "router": router, "sims": sims}
    finally:
        cluster.stop_all(grace=5)
