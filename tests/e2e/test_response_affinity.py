"""A ``previous_response_id`` chain keeps to the replica that served its first turn.

Real etcd, three sim replicas of one model registered as a node would, a router (the
default policy: session affinity, then power of two choices) and a gateway as processes,
the official ``openai`` client. The replica that answered is the router's internal
``x-nebula-replica`` header, shown by the gateway's ``--expose-replica-header``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from devtools.cluster import Cluster
from tests.e2e.test_router_support import Sim, start_sims, wait_router_sees

MODEL = "Org/Chain-Chat"
UID = "chain"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    cluster = Cluster(Path(tmp_path_factory.mktemp("affinity")) / "run")
    cluster.start_etcd()
    try:
        sims = start_sims(cluster, UID, MODEL, 3, "--itl-ms", "1", "--output-tokens", "6")
        _, router = cluster.start_router()
        wait_router_sees(router, UID, 3)
        _, gateway = cluster.start_gateway([router], args=["--expose-replica-header"])
        yield {"cluster": cluster, "sims": sims, "router": router, "gateway": gateway}
    finally:
        cluster.stop_all(grace=5)


def turn(client: openai.OpenAI, text: str, previous: str | None) -> tuple[str, str]:
    """(response id, replica that served it) of one turn."""
    kwargs: dict[str, Any] = {"previous_response_id": previous} if previous else {}
    raw = client.responses.with_raw_response.create(model=MODEL, input=text,
                                                    max_output_tokens=6, **kwargs)
    return raw.parse().id, raw.headers["x-nebula-replica"]


def test_chain_stays_on_one_replica_and_moves_when_it_dies(env: dict[str, Any]) -> None:
    client = openai.OpenAI(base_url=f"{env['gateway']}/v1", api_key="unused", max_retries=0,
                           timeout=30)
    homes = []
    last: dict[str, str] = {}
    for chain in range(3):  # by chance alone, 4 turns on one of 3 replicas: 1 in 27
        previous = None
        seen = []
        for n in range(4):
            previous, replica = turn(client, f"chain {chain} turn {n}", previous)
            seen.append(replica)
        assert len(set(seen)) == 1, f"chain {chain} moved between replicas: {seen}"
        homes.append(seen[0])
        last[seen[0]] = previous
    # the replica a chain lives on dies: its next turn goes elsewhere and still succeeds
    home, previous_id = next(iter(last.items()))
    sims: list[Sim] = env["sims"]
    dead = next(s for s in sims if s.ref == home)
    dead.proc.kill9()
    response_id, replica = turn(client, "after the crash", previous_id)
    assert replica != home
    items = client.responses.input_items.list(response_id, order="asc", limit=100).data
    said = [part.text for item in items if getattr(item, "role", "") == "user"
            for part in item.content]  # type: ignore[union-attr]
    assert said[-1] == "after the crash" and len(said) == 5  # the whole chain came along
