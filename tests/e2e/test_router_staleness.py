"""The router's /readyz tells a frozen etcd from a quiet one (real etcd, real router).

SIGSTOP freezes etcd the way a black-holed connection does: the TCP connections
stay open and nothing answers. The router's table is then stale; /readyz must say
so (503 with the reason: a silent watch, or a lease refresh that ran out) within the
bound, and be ready again after SIGCONT.
"""

from __future__ import annotations

import os
import re
import signal
import time

from devtools.cluster import Cluster, http_get, wait_for
from nebula_common.store import PROGRESS_INTERVAL_S, WATCH_STALL_S
from tests.e2e.test_node_lifecycle import require_binaries


def readyz(url: str) -> tuple[int, str]:
    status, body = http_get(f"{url}/readyz", timeout=5)
    return status, body.decode(errors="replace")


def test_readyz_turns_503_while_etcd_is_frozen_and_recovers(cluster: Cluster) -> None:
    require_binaries("nebula-router")
    _router, url = cluster.start_router()
    wait_for(lambda: readyz(url)[0] == 200, 30, "router ready")
    # Quiet but answering: progress notifications keep it ready past the bound.
    time.sleep(WATCH_STALL_S + PROGRESS_INTERVAL_S)
    assert readyz(url)[0] == 200, readyz(url)

    etcd = cluster.procs["etcd"].pid
    os.kill(etcd, signal.SIGSTOP)
    try:
        frozen_at = time.monotonic()
        _, detail = wait_for(lambda: (r := readyz(url))[0] == 503 and r,
                             WATCH_STALL_S + 10, "/readyz 503 while etcd is frozen")
        took = time.monotonic() - frozen_at
        assert took <= WATCH_STALL_S + 2 * PROGRESS_INTERVAL_S + 1, took
        # Whichever notices first says why: a watch silent past its bound, or the lease's
        # refresh cut at its bound (then the endpoint and the error are named).
        assert "stale" in detail or re.search(r"etcd unreachable.*\(127\.0\.0\.1:\d+: \w+",
                                              detail), detail
        assert http_get(f"{url}/healthz")[0] == 200, "alive, only not ready"
    finally:
        os.kill(etcd, signal.SIGCONT)
    wait_for(lambda: readyz(url)[0] == 200, 30, "/readyz 200 again after SIGCONT")
