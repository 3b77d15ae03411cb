"""etcd with user/password auth and with mutual TLS: the store and a real router use both.

etcd is started for real (auth enabled with etcdctl; TLS with a CA, server and
client certificates made by openssl in tmp). The store reads, writes and watches;
a router process started with the etcd auth/TLS flags loads its endpoint table;
a wrong password or a missing client certificate is a clear error, not a hang.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from devtools.cluster import BIN, Cluster, etcd_binary, free_port, http_get, wait_for
from nebula_common.records import Assignment, Endpoint, NodeStatus, PlacementPlan
from nebula_common.store import EtcdConfig, EtcdStore, PrefixMirror

PASSWORD = "s3cret-pw"


def etcdctl() -> str:
    return str(Path(etcd_binary()).with_name("etcdctl"))


def ctl(endpoint: str, *args: str, tls: dict[str, str] | None = None,
        user: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [etcdctl(), f"--endpoints={endpoint}", "--dial-timeout=3s", "--command-timeout=5s"]
    if tls:
        argv += [f"--cacert={tls['ca']}", f"--cert={tls['cert']}", f"--key={tls['key']}"]
    if user:
        argv += [f"--user={user}"]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=20)


def enable_auth(endpoint: str, tls: dict[str, str] | None = None) -> None:
    for args in (("user", "add", f"root:{PASSWORD}"), ("user", "grant-role", "root", "root"),
                 ("auth", "enable")):
        result = ctl(endpoint, *args, tls=tls)
        # grant-role may say the role is already granted, depending on the etcd version
        assert result.returncode == 0 or "already" in result.stderr, (args, result.stderr)


# -- certificates --------------------------------------------------------------------------
def make_certs(folder: Path) -> dict[str, str]:
    """CA, server (127.0.0.1/localhost) and client (CN=root) certificates with openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make the test certificates (apt-get install openssl)")
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=folder,
                       timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        "/CN=nebula-test-ca", "-keyout", "ca.key", "-out", "ca.crt",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, cn, ext in (
        ("server", "etcd", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                           "extendedKeyUsage=serverAuth,clientAuth\n"),
        ("client", "root", "extendedKeyUsage=clientAuth\n"),
    ):
        (folder / f"{name}.ext").write_text(ext)
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", "-extfile", f"{name}.ext")
    return {"ca": str(folder / "ca.crt"), "cert": str(folder / "client.crt"),
            "key": str(folder / "client.key"), "server_cert": str(folder / "server.crt"),
            "server_key": str(folder / "server.key")}


def start_tls_etcd(cluster: Cluster, certs: dict[str, str]) -> str:
    port, peer = free_port(), free_port()
    cluster.spawn("etcd-tls", [
        etcd_binary(), "--name", "tls", "--data-dir", str(cluster.run_dir / "etcd-tls-data"),
        "--listen-client-urls", f"https://127.0.0.1:{port}",
        "--advertise-client-urls", f"https://127.0.0.1:{port}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"tls=http://127.0.0.1:{peer}",
        "--listen-metrics-urls", "",
        "--cert-file", certs["server_cert"], "--key-file", certs["server_key"],
        "--trusted-ca-file", certs["ca"], "--client-cert-auth",
    ], env={"ETCD_UNSUPPORTED_ARCH": os.environ.get("ETCD_UNSUPPORTED_ARCH", "")})
    endpoint = f"127.0.0.1:{port}"
    wait_for(lambda: ctl(f"https://{endpoint}", "endpoint", "health", tls=certs).returncode
             == 0, 30, "TLS etcd healthy", 0.3)
    return endpoint


# -- what every configuration must support ---------------------------------------------------
async def read_write_watch(config: EtcdConfig) -> None:
    store = EtcdStore(config)
    try:
        await store.wait_until_ready(10)
        await store.put("/sec/a", b"1")
        kv = await store.get("/sec/a")
        assert kv is not None and kv.value == b"1"
        mirror = PrefixMirror(store, "/sec/")
        mirror.start()
        try:
            await asyncio.wait_for(mirror.synced.wait(), 10)
            assert mirror.items.get("/sec/a") == b"1"
            await store.put("/sec/b", b"2")  # arrives through the watch
            async with asyncio.timeout(10):
                while mirror.items.get("/sec/b") != b"2":
                    await asyncio.sleep(0.05)
        finally:
            await mirror.stop()
        lease = await store.grant(5)
        await store.put("/sec/leased", b"x", lease=lease)
        assert await store.refresh(lease) > 0
        await store.revoke(lease)
        assert await store.get("/sec/leased") is None
    finally:
        await store.close()


def put_endpoint(config: EtcdConfig, base_url: str) -> None:
    """A placed model with one ready endpoint, as the scheduler and a node would write it."""
    async def go() -> None:
        store = EtcdStore(config)
        try:
            plan = PlacementPlan(model_uid="sec", model_name="sec-model", engine="sim",
                                 assignments=[Assignment(replica_id="r0", node_id="n",
                                                         port=1)])
            ep = Endpoint(model_uid="sec", model_name="sec-model", replica_id="r0",
                          node_id="n", base_url=base_url, engine="sim")
            await store.put("/nodes/n", NodeStatus("n", "127.0.0.1").to_json())
            await store.put("/placements/sec", plan.to_json())
            await store.put("/endpoints/sec/r0", ep.to_json())
        finally:
            await store.close()
    asyncio.run(go())


def router_sees_endpoint(url: str) -> bool:
    status, body = http_get(url + "/debug/endpoints")
    return status == 200 and any(r["base_url"] == "http://127.0.0.1:9" and r["status"] == "ready"
                                 for r in json.loads(body)["endpoints"])


def start_router_with(cluster: Cluster, endpoint: str, flags: list[str], name: str
                      ) -> tuple[subprocess.Popen | None, str]:
    port = free_port()
    proc = cluster.spawn(name, [str(BIN / "nebula-router"), "--listen", f"127.0.0.1:{port}",
                                "--etcd-endpoints", endpoint, "--log-format", "json", *flags])
    return proc, f"http://127.0.0.1:{port}"


def assert_clear_failure(proc, url: str, what: str) -> None:
    """A refused credential is said clearly, within seconds, one way or the other:

    - the process exits non-zero with a one-line error naming etcd (like the
      scheduler's ``nebula-scheduler: error: etcd unreachable``), or
    - it keeps running (serving nothing) but logs a line naming the etcd
      authentication/TLS failure and reports not ready on /readyz.
    """
    words = ("auth", "password", "credential", "permission", "tls", "certificate", "handshake")

    def said_clearly() -> bool:
        lines = [line.lower() for line in proc.log().splitlines() if line.strip()]
        named = any("etcd" in line and any(w in line for w in words) for line in lines)
        if not proc.alive():
            return True
        return named and http_get(url + "/readyz")[0] != 200

    try:
        wait_for(said_clearly, 15, f"a clear error for {what}", 0.2)
    except TimeoutError:
        raise AssertionError(
            f"{what}: after 15 s the process neither exited nor said why it cannot use "
            f"etcd; log:\n{proc.log()[-1500:]}") from None
    assert "Traceback" not in proc.log(), proc.log()[-2000:]
    if not proc.alive():
        assert proc.popen.returncode != 0
        lines = [line for line in proc.log().splitlines() if line.strip()]
        assert lines and "etcd" in lines[-1].lower(), lines[-3:]


# -- auth ---------------------------------------------------------------------------------------
def test_store_with_password_auth(cluster: Cluster) -> None:
    enable_auth(cluster.etcd_endpoint)
    asyncio.run(read_write_watch(EtcdConfig(endpoints=(cluster.etcd_endpoint,),
                                            username="root", password=PASSWORD, timeout=3)))


def test_store_wrong_password_is_a_clear_error(cluster: Cluster) -> None:
    enable_auth(cluster.etcd_endpoint)

    async def go() -> str:
        store = EtcdStore(EtcdConfig(endpoints=(cluster.etcd_endpoint,), username="root",
                                     password="wrong", timeout=3))
        try:
            async with asyncio.timeout(15):
                await store.put("/sec/x", b"1")
        except TimeoutError:
            raise AssertionError("a wrong password hangs instead of failing") from None
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            await store.close()
        raise AssertionError("a wrong password was accepted")

    message = asyncio.run(go())
    print(f"wrong password -> {message}")
    assert "auth" in message.lower() or "password" in message.lower(), message
    assert "\n" not in message.strip(), message


def test_router_with_password_auth(cluster: Cluster) -> None:
    enable_auth(cluster.etcd_endpoint)
    config = EtcdConfig(endpoints=(cluster.etcd_endpoint,), username="root",
                        password=PASSWORD, timeout=3)
    put_endpoint(config, "http://127.0.0.1:9")
    proc, url = start_router_with(cluster, cluster.etcd_endpoint,
                                  ["--etcd-username", "root", "--etcd-password", PASSWORD],
                                  "router-auth")
    cluster.wait_healthy(proc, url)
    wait_for(lambda: router_sees_endpoint(url), 20, "router loads its table with auth")
    wait_for(lambda: http_get(url + "/readyz")[0] == 200, 20, "router ready")
    assert PASSWORD not in proc.log()


def test_router_password_from_environment(cluster: Cluster) -> None:
    """Containers pass secrets by environment: NEBULA_ETCD_USERNAME/PASSWORD."""
    enable_auth(cluster.etcd_endpoint)
    config = EtcdConfig(endpoints=(cluster.etcd_endpoint,), username="root",
                        password=PASSWORD, timeout=3)
    put_endpoint(config, "http://127.0.0.1:9")
    port = free_port()
    proc = cluster.spawn("router-env", [str(BIN / "nebula-router"), "--listen",
                                        f"127.0.0.1:{port}", "--etcd-endpoints",
                                        cluster.etcd_endpoint],
                         env={"NEBULA_ETCD_USERNAME": "root", "NEBULA_ETCD_PASSWORD": PASSWORD})
    url = f"http://127.0.0.1:{port}"
    cluster.wait_healthy(proc, url)
    wait_for(lambda: router_sees_endpoint(url), 20, "router loads its table (env auth)")


def test_router_wrong_password_is_a_clear_error(cluster: Cluster) -> None:
    enable_auth(cluster.etcd_endpoint)
    proc, url = start_router_with(cluster, cluster.etcd_endpoint,
                                  ["--etcd-username", "root", "--etcd-password", "wrong"],
                                  "router-badpw")
    assert_clear_failure(proc, url, "a wrong etcd password")


# -- TLS ------------------------------------------------------------------------------------------
@pytest.fixture
def tls_etcd(cluster: Cluster, tmp_path: Path) -> tuple[str, dict[str, str]]:
    certs = make_certs(tmp_path / "certs")
    return start_tls_etcd(cluster, certs), certs


def test_store_with_mutual_tls(tls_etcd: tuple[str, dict[str, str]]) -> None:
    endpoint, certs = tls_etcd
    asyncio.run(read_write_watch(EtcdConfig(endpoints=(endpoint,), ca_cert=certs["ca"],
                                            client_cert=certs["cert"],
                                            client_key=certs["key"], timeout=3)))


def test_store_tls_plus_password(tls_etcd: tuple[str, dict[str, str]]) -> None:
    endpoint, certs = tls_etcd
    enable_auth(f"https://{endpoint}", tls=certs)
    asyncio.run(read_write_watch(EtcdConfig(endpoints=(endpoint,), ca_cert=certs["ca"],
                                            client_cert=certs["cert"], client_key=certs["key"],
                                            username="root", password=PASSWORD, timeout=3)))


def test_store_tls_without_client_cert_fails_clearly(tls_etcd: tuple[str, dict[str, str]]
                                                     ) -> None:
    endpoint, certs = tls_etcd

    async def go() -> str:
        store = EtcdStore(EtcdConfig(endpoints=(endpoint,), ca_cert=certs["ca"], timeout=3))
        try:
            async with asyncio.timeout(20):
                await store.put("/sec/x", b"1")
        except TimeoutError:
            raise AssertionError("a TLS handshake failure hangs instead of failing") from None
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            await store.close()
        raise AssertionError("etcd accepted a client without a certificate")

    assert asyncio.run(go())


def test_router_with_mutual_tls(cluster: Cluster, tls_etcd: tuple[str, dict[str, str]]) -> None:
    endpoint, certs = tls_etcd
    config = EtcdConfig(endpoints=(endpoint,), ca_cert=certs["ca"], client_cert=certs["cert"],
                        client_key=certs["key"], timeout=3)
    put_endpoint(config, "http://127.0.0.1:9")
    proc, url = start_router_with(cluster, endpoint, [
        "--etcd-ca-cert", certs["ca"], "--etcd-cert", certs["cert"], "--etcd-key", certs["key"]],
        "router-tls")
    cluster.wait_healthy(proc, url)
    wait_for(lambda: router_sees_endpoint(url), 20, "router loads its table over TLS")
    _status, body = http_get(url + "/debug/endpoints")
    assert "127.0.0.1:9" in json.dumps(json.loads(body))


def test_cli_wrong_password_is_one_line(cluster: Cluster) -> None:
    """The operator CLI: a refused password is one clear line and a non-zero exit."""
    enable_auth(cluster.etcd_endpoint)
    good = subprocess.run([str(BIN / "nebula"), "--etcd-endpoints", cluster.etcd_endpoint,
                           "--etcd-username", "root", "--etcd-password", PASSWORD, "status"],
                          capture_output=True, text=True, timeout=30)
    assert good.returncode == 0, good.stderr
    bad = subprocess.run([str(BIN / "nebula"), "--etcd-endpoints", cluster.etcd_endpoint,
                          "--etcd-username", "root", "--etcd-password", "wrong", "status"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0
    assert bad.stderr.strip().count("\n") == 0, bad.stderr
    assert "Traceback" not in bad.stderr
    assert "auth" in bad.stderr.lower() or "password" in bad.stderr.lower(), bad.stderr
    assert "wrong" not in bad.stderr  # the password itself is not echoed


def test_a_plaintext_client_connecting_during_a_tls_login_stays_plaintext(
        cluster: Cluster, tls_etcd: tuple[str, dict[str, str]]) -> None:
    """One process, two etcd clusters: a TLS one with passwords and a plaintext one. The TLS
    client's channel factory used to stay swapped while etcd checked its password, so a
    plaintext client connecting then got a TLS channel and could not reach its etcd."""
    endpoint, certs = tls_etcd
    enable_auth(f"https://{endpoint}", tls=certs)

    async def go() -> None:
        tls = EtcdStore(EtcdConfig(endpoints=(endpoint,), ca_cert=certs["ca"],
                                   client_cert=certs["cert"], client_key=certs["key"],
                                   username="root", password=PASSWORD, timeout=3))
        plain = EtcdStore(EtcdConfig(endpoints=(cluster.etcd_endpoint,), timeout=3))
        try:
            client = await tls._current()
            login = asyncio.create_task(client.connect())
            async with asyncio.timeout(10):
                while not client._is_connecting:  # its channel is made: the login is sent
                    await asyncio.sleep(0)
            await plain.put("/mixed/a", b"1")
            await asyncio.wait_for(login, 10)
            await tls.put("/mixed/b", b"2")
            kv = await plain.get("/mixed/a")
            assert kv is not None and kv.value == b"1"
        finally:
            await tls.close()
            await plain.close()

    asyncio.run(go())
