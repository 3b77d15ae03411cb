"""etcd auth with one least-privilege user per role (``nebula-etcd-auth``), on a real etcd.

The bootstrap runs twice (it runs before every compose start, so it must be idempotent),
then each role's user is tried on what it may and may not do, and a real router started
with ``--etcd-username`` / ``--etcd-password-file`` loads its table.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.cluster import BIN, Cluster, http_get, wait_for
from nebula_common.etcd_access import GATEWAY, NODE, ROUTER, SCHEDULER
from nebula_common.store import EtcdConfig, EtcdStore

# (user, operation, key, allowed)
CASES = [
    (ROUTER, "get", "/placements/", True),
    (ROUTER, "get", "/nodes/", True),
    (ROUTER, "put", "/placements/m", False),
    (ROUTER, "put", "/endpoints/m/r0", False),
    (ROUTER, "get", "/models/", False),
    (NODE, "put", "/endpoints/m/r0", True),
    (NODE, "put", "/nodes/n1", True),
    (NODE, "put", "/stats/m/r0", True),
    (NODE, "get", "/placements/", True),
    (NODE, "put", "/placements/m", False),
    (NODE, "put", "/models/m", False),
    (NODE, "put", "/election/scheduler", False),
    (SCHEDULER, "put", "/models/m", True),
    (SCHEDULER, "put", "/placements/m", True),
    (SCHEDULER, "put", "/election/scheduler", True),
    (SCHEDULER, "get", "/endpoints/", True),
    (SCHEDULER, "put", "/endpoints/m/r0", False),
    (SCHEDULER, "put", "/nodes/n1", False),
    (SCHEDULER, "put", "/keys/0123456789abcdef", True),
    (SCHEDULER, "put", "/autoscale/m", True),
    (SCHEDULER, "get", "/autoscale/", True),
    (ROUTER, "put", "/autoscale/m", False),
    (GATEWAY, "get", "/keys/", True),
    (GATEWAY, "put", "/keys/0123456789abcdef", False),
    (GATEWAY, "get", "/placements/", False),
]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Path]]:
    root = Path(tmp_path_factory.mktemp("etcd-roles"))
    cluster = Cluster(root / "run")
    cluster.start_etcd()
    creds = root / "creds"
    try:
        for _ in range(2):
            out = subprocess.run([str(BIN / "nebula-etcd-auth"), "--etcd-endpoints",
                                  cluster.etcd_endpoint, "--credentials-dir", str(creds)],
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            assert "auth enabled" in out.stdout
        yield cluster, creds
    finally:
        cluster.stop_all()


def attempt(cluster: Cluster, user: str | None, password: str | None, op: str, key: str
            ) -> str:
    """'ok', or the error text etcd gave."""
    async def run() -> str:
        store = EtcdStore(EtcdConfig(endpoints=(cluster.etcd_endpoint,), username=user,
                                     password=password, timeout=3))
        try:
            if op == "get":
                await store.get_prefix(key)
            else:
                await store.put(key, b"{}")
            return "ok"
        except Exception as exc:
            return str(exc)
        finally:
            await store.close()
    return asyncio.run(run())


@pytest.mark.parametrize(("user", "op", "key", "allowed"), CASES,
                         ids=[f"{u}-{o}-{k}" for u, o, k, _ in CASES])
def test_each_role_gets_only_what_it_needs(secured: tuple[Cluster, Path], user: str, op: str,
                                           key: str, allowed: bool) -> None:
    cluster, creds = secured
    result = attempt(cluster, user, (creds / user).read_text().strip(), op, key)
    if allowed:
        assert result == "ok", result
    else:
        assert "permission denied" in result, result


def test_no_credentials_or_a_wrong_password_get_nothing(secured: tuple[Cluster, Path]) -> None:
    cluster, creds = secured
    assert attempt(cluster, None, None, "get", "/placements/") != "ok"
    assert attempt(cluster, ROUTER, "wrong", "get", "/placements/") != "ok"
    assert (creds / ROUTER).stat().st_mode & 0o077 == 0, "password files are private"


def test_a_router_runs_with_its_user_and_password_file(secured: tuple[Cluster, Path]) -> None:
    cluster, creds = secured
    _, url = cluster.start_router(args=["--etcd-username", ROUTER, "--etcd-password-file",
                                        str(creds / ROUTER)])
    wait_for(lambda: http_get(f"{url}/readyz")[0] == 200, 30, "the router's table loaded")
