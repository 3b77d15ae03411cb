"""The router end to end: real etcd, real `nebula-sim` engines, the router as a process.

Endpoints are written into etcd exactly as a node writes them, so these tests do
not depend on the node agent.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from devtools.cluster import BIN, REPO, Cluster, http_get, http_post_json, wait_for
from tests.e2e.test_router_support import (
    Sim,
    debug_endpoints,
    deregister,
    metric_value,
    register,
    start_sims,
    wait_router_sees,
)

MODEL = "Org/Tiny-Chat"
UID = "tiny"
PROFILE = REPO / "deploy" / "router" / "policy-prefix.yaml"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """etcd + 3 sim replicas of one model + a least_load router, shared by this module."""
    cluster = Cluster(Path(tmp_path_factory.mktemp("router")) / "run")
    cluster.start_etcd()
    try:
        sims = start_sims(cluster, UID, MODEL, 3, "--itl-ms", "20", "--output-tokens", "8")
        _, router = cluster.start_router(args=["--eject-after", "2", "--eject-base", "30"])
        wait_router_sees(router, UID, 3)
        yield {"cluster": cluster, "sims": sims, "router": router}
    finally:
        cluster.stop_all(grace=5)


def client(router: str, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{router}/v1", api_key="unused", max_retries=0, **kw)


def all_idle(router: str) -> bool:
    return all(r["in_flight"] == 0 for r in debug_endpoints(router))


def test_healthz_readyz_and_models(env: dict) -> None:
    router = env["router"]
    assert http_get(f"{router}/healthz") == (200, b"ok")
    assert http_get(f"{router}/readyz")[0] == 200
    status, body = http_get(f"{router}/v1/models")
    assert status == 200
    listing = json.loads(body)
    assert listing["object"] == "list"
    (item,) = [m for m in listing["data"] if m["nebula"]["model_uid"] == UID]
    assert item["id"] == MODEL and item["object"] == "model" and item["owned_by"] == "nebula"
    assert item["nebula"] == {"model_uid": UID, "engine": "sim", "ready_replicas": 3}
    assert isinstance(item["created"], int)
    assert json.loads(http_get(f"{router}/v1/models/{UID}")[1])["id"] == MODEL
    assert http_get(f"{router}/v1/models/nope")[0] == 404
    metrics = http_get(f"{router}/metrics")[1].decode()
    assert metric_value(metrics, "nebula_router_etcd_connected") == 1.0
    assert metric_value(metrics, "nebula_router_endpoints", state="ready") >= 3


def test_chat_non_stream_and_stream_through_openai_client(env: dict) -> None:
    c = client(env["router"])
    raw = c.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    replica = raw.headers["x-nebula-replica"]
    assert replica in {s.ref for s in env["sims"]}
    completion = raw.parse()
    assert completion.choices[0].message.content
    # by uid too
    assert c.chat.completions.create(model=UID, messages=[{"role": "user", "content": "x"}],
                                     max_tokens=4).choices[0].message.content
    chunks, arrivals = [], []
    for chunk in c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8, stream=True):
        chunks.append(chunk)
        arrivals.append(time.monotonic())
    assert len(chunks) >= 3
    # chunks arrive as the engine makes them (20 ms apart), not buffered to the end
    assert arrivals[-1] - arrivals[0] >= 0.07  # 140 ms made; a buffered stream reads ~0
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text
    # completions and embeddings paths too
    assert c.completions.create(model=MODEL, prompt="once upon", max_tokens=4).choices[0].text
    assert c.embeddings.create(model=MODEL, input="abc").data[0].embedding


def test_traceparent_and_request_id_reach_the_engine(env: dict) -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    status, _ = http_post_json(f"{env['router']}/v1/chat/completions", CHAT,
                               headers={"traceparent": tp, "x-request-id": "req-123",
                                        "x-session-id": "trace-test"})
    assert status == 200
    seen = [s.stats()["last_request_headers"] for s in env["sims"]]
    assert any(h.get("x-request-id") == "req-123" for h in seen), seen


def test_error_shapes(env: dict) -> None:
    router = env["router"]
    status, body = http_post_json(f"{router}/v1/chat/completions", {**CHAT, "model": "nope"})
    assert status == 404
    err = json.loads(body)["error"]
    assert err["code"] == "model_not_found" and err["param"] == "model" and err["message"]

    conn = http.client.HTTPConnection(router.removeprefix("http://"), timeout=5)
    conn.request("POST", "/v1/chat/completions", body=b"{not json",
                 headers={"content-type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 400 and "error" in json.loads(resp.read())
    conn.close()

    status, body = http_post_json(f"{router}/v1/chat/completions", {"messages": []})
    assert status == 400 and json.loads(body)["error"]["param"] == "model"

    with pytest.raises(openai.NotFoundError):
        client(router).chat.completions.create(model="nope", messages=CHAT["messages"])


DEEP = 200_000


@pytest.mark.parametrize(("path", "body", "status"), [
    ("/v1/chat/completions", b"[" * DEEP + b"]" * DEEP, 400),
    ("/v1/chat/completions", b'{"model":' * DEEP + b"1" + b"}" * DEEP, 400),
    ("//v1/chat/completions", json.dumps(CHAT).encode(), 404),
    ("/v1//chat/completions", json.dumps(CHAT).encode(), 404),
], ids=["deep-array", "deep-object", "double-slash", "inner-double-slash"])
def test_deep_json_and_a_double_slash_get_openai_errors(env: dict, path: str, body: bytes,
                                                        status: int) -> None:
    conn = http.client.HTTPConnection(env["router"].removeprefix("http://"), timeout=10)
    conn.request("POST", path, body=body, headers={"content-type": "application/json"})
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    assert resp.status == status, raw[:300]
    assert resp.getheader("content-type") == "application/json"
    err = json.loads(raw)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert "Traceback" not in env["cluster"].procs["router"].log()


def test_body_too_large_is_413(env: dict) -> None:
    cluster: Cluster = env["cluster"]
    _, small = cluster.start_router(name="router-small", args=["--max-body-bytes", "1000",
                                                               "--no-replica-header"])
    wait_router_sees(small, UID, 3)
    status, body = http_post_json(f"{small}/v1/chat/completions",
                                  {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]})
    assert status == 413 and json.loads(body)["error"]["message"]
    raw = client(small).chat.completions.with_raw_response.create(**CHAT)
    assert raw.http_response.status_code == 200
    assert "x-nebula-replica" not in raw.headers  # --no-replica-header


def test_no_ready_replica_is_503_with_retry_after(env: dict) -> None:
    cluster: Cluster = env["cluster"]
    lone = Sim("none", "http://127.0.0.1:9", "lonely", "0", None)
    register(cluster, lone, "Org/Lonely", status="draining")
    wait_router_sees(env["router"], "lonely", 1, status="draining")
    req = json.dumps({**CHAT, "model": "Org/Lonely"}).encode()
    conn = http.client.HTTPConnection(env["router"].removeprefix("http://"), timeout=5)
    conn.request("POST", "/v1/chat/completions", body=req,
                 headers={"content-type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 503 and resp.getheader("retry-after")
    assert json.loads(resp.read())["error"]["type"] == "service_unavailable"
    conn.close()
    deregister(cluster, lone)


def test_unreachable_replicas_are_503_with_retry_after(env: dict) -> None:
    """A host gone before its lease expires: nothing could be sent, so it is 503 + when to
    retry (not a 502, which says an upstream answered wrongly)."""
    cluster: Cluster = env["cluster"]
    gone = [Sim("none", "http://127.0.0.1:9", "gone", str(i), None) for i in range(2)]
    for sim in gone:
        register(cluster, sim, "Org/Gone")
    wait_router_sees(env["router"], "gone", 2)
    try:
        req = json.dumps({**CHAT, "model": "Org/Gone"}).encode()
        conn = http.client.HTTPConnection(env["router"].removeprefix("http://"), timeout=10)
        conn.request("POST", "/v1/chat/completions", body=req,
                     headers={"content-type": "application/json"})
        resp = conn.getresponse()
        err = json.loads(resp.read())["error"]
        conn.close()
        assert resp.status == 503 and resp.getheader("retry-after") == "1", err
        assert err["code"] == "no_reachable_replica"
        # the client is told no internal address; the log has it
        assert err["message"] == "no replica of model 'Org/Gone' is reachable (2 tried)"
        assert "127.0.0.1:9" in env["cluster"].procs["router"].log()
    finally:
        for sim in gone:
            deregister(cluster, sim)


def test_draining_endpoint_gets_no_new_requests(env: dict) -> None:
    cluster: Cluster = env["cluster"]
    router = env["router"]
    sims: list[Sim] = env["sims"]
    draining = sims[0]
    register(cluster, draining, MODEL, status="draining")
    try:
        wait_router_sees(router, UID, 1, status="draining")
        before = draining.stats()["requests_total"]
        c = client(router)
        seen = Counter()
        for _ in range(20):
            raw = c.chat.completions.with_raw_response.create(**CHAT)
            seen[raw.headers["x-nebula-replica"]] += 1
        assert draining.ref not in seen and sum(seen.values()) == 20
        assert draining.stats()["requests_total"] == before
    finally:
        register(cluster, draining, MODEL)
        wait_router_sees(router, UID, 3)


def test_session_affinity_50_requests(env: dict) -> None:
    cluster: Cluster = env["cluster"]
    _, router = cluster.start_router(name="router-session", args=["--policy", "session"])
    wait_router_sees(router, UID, 3)
    c = client(router)
    for session in ("alice", "bob"):
        seen = Counter()
        for _ in range(50):
            raw = c.chat.completions.with_raw_response.create(
                **CHAT, extra_headers={"x-session-id": session})
            seen[raw.headers["x-nebula-replica"]] += 1
        assert len(seen) == 1, seen
    # the body's `user` is a session key for the session policy
    users = Counter(c.chat.completions.with_raw_response.create(**CHAT, user="carol")
                    .headers["x-nebula-replica"] for _ in range(10))
    assert len(users) == 1
    text = http_get(f"{router}/metrics")[1].decode()
    assert metric_value(text, "nebula_router_policy_decisions_total",
                        policy="session", reason="session_affinity") >= 100


def stream_two_chunks_then_drop(router: str, body: dict) -> None:
    conn = http.client.HTTPConnection(router.removeprefix("http://"), timeout=10)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(),
                 headers={"content-type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    events = 0
    while events < 2:
        line = resp.fp.readline()
        assert line, "stream ended early"
        if line.startswith(b"data:"):
            events += 1
    conn.sock.close()  # the client goes away mid-stream
    conn.close()


def test_client_disconnect_cancels_upstream_and_in_flight_returns_to_zero(env: dict) -> None:
    router = env["router"]
    sims: list[Sim] = env["sims"]
    body = {**CHAT, "stream": True, "max_tokens": 200}
    before = sum(s.stats()["requests_cancelled"] for s in sims)
    stream_two_chunks_then_drop(router, body)
    dropped = time.monotonic()
    wait_for(lambda: sum(s.stats()["requests_cancelled"] for s in sims) > before, 1.0,
             "the sim to see the cancel")
    assert time.monotonic() - dropped < 1.5
    # many more, concurrently, plus failing and mid-stream-cut requests
    threads = [threading.Thread(target=stream_two_chunks_then_drop, args=(router, body))
               for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    wait_for(lambda: sum(s.stats()["requests_cancelled"] for s in sims) >= before + 11, 5,
             "every cancel to reach the engines")
    wait_for(lambda: all_idle(router), 5, "in-flight back to 0")
    text = http_get(f"{router}/metrics")[1].decode()
    assert metric_value(text, "nebula_router_client_disconnects_total") >= 11
    assert metric_value(text, "nebula_router_in_flight") == 0


def test_failures_retry_eject_and_in_flight_returns_to_zero(env: dict) -> None:
    router = env["router"]
    sims: list[Sim] = env["sims"]
    bad = sims[2]
    bad.faults(fail_rate=1.0)
    try:
        c = client(router)

        def bad_ejected() -> bool:
            rows = {r["replica"]: r for r in debug_endpoints(router) if r["model_uid"] == UID}
            return bool(rows[bad.replica_id]["ejected"])

        # Every request succeeds: 500s are retried on another replica. p2c picks among idle
        # replicas at random, so ask until the bad one has failed twice and is ejected (100
        # tries: a third of them land on it).
        for _ in range(100):
            raw = c.chat.completions.with_raw_response.create(**CHAT)
            assert raw.headers["x-nebula-replica"] != bad.ref
            if bad_ejected():
                break
        assert bad_ejected(), debug_endpoints(router)
        text = http_get(f"{router}/metrics")[1].decode()
        assert metric_value(text, "nebula_router_ejections_total", model=UID) >= 1
        assert metric_value(text, "nebula_router_retries_total", model=UID) >= 1
        assert metric_value(text, "nebula_router_upstream_errors_total", kind="status_5xx") >= 2
        assert metric_value(text, "nebula_router_endpoints", state="ejected") >= 1
        failed_before = bad.stats()["requests_total"]
        for _ in range(10):
            c.chat.completions.create(**CHAT)
        assert bad.stats()["requests_total"] == failed_before  # ejected: nothing sent
        wait_for(lambda: all_idle(router), 5, "in-flight back to 0")
    finally:
        bad.faults(fail_rate=0.0)


def test_mid_stream_failure_ends_with_an_error_event(env: dict) -> None:
    cluster: Cluster = env["cluster"]
    sims = start_sims(cluster, "cut", "Org/Cut", 1, "--itl-ms", "10",
                      "--stream-cut-after", "3")
    wait_router_sees(env["router"], "cut", 1)
    c = client(env["router"])
    got = []
    with pytest.raises(openai.APIError):
        for chunk in c.chat.completions.create(model="Org/Cut", messages=CHAT["messages"],
                                               max_tokens=50, stream=True):
            got.append(chunk)
    text = http_get(f"{env['router']}/metrics")[1].decode()
    assert metric_value(text, "nebula_router_stream_errors_total") >= 1
    wait_for(lambda: all_idle(env["router"]), 5, "in-flight back to 0")
    deregister(cluster, sims[0])


def test_kill9_one_replica_under_load_zero_client_failures(cluster: Cluster) -> None:
    sims = start_sims(cluster, "k9", "Org/K9", 3, "--itl-ms", "2", "--output-tokens", "4")
    _, router = cluster.start_router(args=["--eject-after", "3"])
    wait_router_sees(router, "k9", 3)
    victim = sims[1]
    body = {**CHAT, "model": "Org/K9"}
    results: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def loop() -> None:
        conn = http.client.HTTPConnection(router.removeprefix("http://"), timeout=10)
        payload = json.dumps(body).encode()
        for _ in range(5000):  # bounded
            if stop.is_set():
                break
            started = time.monotonic()
            try:
                conn.request("POST", "/v1/chat/completions", body=payload,
                             headers={"content-type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                results.append((started, resp.status, resp.getheader("x-nebula-replica", "")))
            except (OSError, http.client.HTTPException) as exc:
                results.append((started, -1, repr(exc)))
                conn.close()
                conn = http.client.HTTPConnection(router.removeprefix("http://"), timeout=10)
        conn.close()

    workers = [threading.Thread(target=loop) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        wait_for(lambda: len(results) > 50, 20, "steady load")
        victim.proc.kill9()
        killed = time.monotonic()
        wait_for(lambda: len([r for r in results if r[0] > killed]) > 30, 20, "load after kill")
        deregister(cluster, victim)  # what the node (or its lease expiry) does
        wait_router_sees(router, "k9", 2)
        gone = time.monotonic()
        connect_errors = metric_value(http_get(f"{router}/metrics")[1].decode(),
                                      "nebula_router_upstream_errors_total", kind="connect")
        wait_for(lambda: len([r for r in results if r[0] > gone]) > 100, 30, "load after removal")
    finally:
        stop.set()
        for w in workers:
            w.join(15)
    failures = [r for r in results if r[1] != 200]
    assert not failures, failures[:5]
    after_gone = [r for r in results if r[0] > gone + 0.05]
    assert after_gone and all(r[2] != victim.ref for r in after_gone)
    # nothing was attempted on the dead replica once its key was gone
    text = http_get(f"{router}/metrics")[1].decode()
    assert metric_value(text, "nebula_router_upstream_errors_total", kind="connect") == \
        connect_errors
    assert Counter(r[2] for r in after_gone).keys() == {sims[0].ref, sims[2].ref}
    wait_for(lambda: all_idle(router), 5, "in-flight back to 0")


def test_stream_ttfb_timeout_retries_on_another_replica(env: dict) -> None:
    """A stream with no first byte in time goes to another replica (non-streamed requests
    have their own budget and are not retried: see test_router_faults)."""
    cluster: Cluster = env["cluster"]
    _, router = cluster.start_router(name="router-ttfb",
                                     args=["--ttfb-timeout", "0.5", "--eject-after", "0"])
    wait_router_sees(router, UID, 3)
    sims: list[Sim] = env["sims"]
    hung = sims[0]
    tried_before = hung.stats()["requests_total"]
    cancelled_before = hung.stats()["requests_cancelled"]
    hung.faults(hang=True)
    try:
        c = client(router)
        seen = Counter()
        started = time.monotonic()
        # A third of the first picks land on the hung replica (p2c among idle ones is random):
        # ask until it has been tried at least once, and a dozen times in all.
        for sent in range(1, 41):
            with c.chat.completions.with_streaming_response.create(**CHAT, stream=True) as raw:
                seen[raw.headers["x-nebula-replica"]] += 1
                assert "[DONE]" in raw.text()
            if sent >= 12 and hung.stats()["requests_total"] > tried_before:
                break
        assert hung.stats()["requests_total"] > tried_before, "the hung sim was never tried"
        assert hung.ref not in seen
        assert time.monotonic() - started < sent * 0.5 + 5
        text = http_get(f"{router}/metrics")[1].decode()
        assert metric_value(text, "nebula_router_upstream_errors_total", kind="ttfb_timeout") >= 1
        # the hung engine saw its requests cancelled when the router gave up on them
        wait_for(lambda: hung.stats()["requests_cancelled"] > cancelled_before, 2,
                 "cancel on the hung sim")
        wait_for(lambda: all_idle(router), 5, "in-flight back to 0")
    finally:
        hung.faults(hang=False)


def test_keeps_serving_while_etcd_is_down(cluster: Cluster) -> None:
    sims = start_sims(cluster, "e", "Org/E", 2, "--itl-ms", "1", "--output-tokens", "4")
    _, router = cluster.start_router()
    wait_router_sees(router, "e", 2)
    body = {**CHAT, "model": "Org/E"}
    assert http_get(f"{router}/readyz")[0] == 200
    cluster.procs["etcd"].stop(grace=5)

    def unready() -> bool:
        status, detail = http_get(f"{router}/readyz")
        return status == 503 and b"etcd" in detail
    wait_for(unready, 20, "readyz to report etcd unreachable")
    text = http_get(f"{router}/metrics")[1].decode()
    assert metric_value(text, "nebula_router_etcd_connected") == 0.0
    for _ in range(5):  # the last known table still serves
        assert http_post_json(f"{router}/v1/chat/completions", body)[0] == 200
    cluster.start_etcd()
    wait_for(lambda: http_get(f"{router}/readyz")[0] == 200, 30, "readyz back to 200")
    deregister(cluster, sims[0])
    wait_router_sees(router, "e", 1)  # the watch resumed


def test_prefix_policy_keeps_a_conversation_on_one_replica(env: dict) -> None:
    cluster: Cluster = env["cluster"]
    _, router = cluster.start_router(name="router-prefix", args=["--policy", "prefix"])
    wait_router_sees(router, UID, 3)
    c = client(router)
    system = {"role": "system", "content": "You are a terse assistant. " * 20}
    placement: dict[int, set[str]] = {}
    for conv in range(12):
        history = [system, {"role": "user", "content": f"conversation {conv}: hello"}]
        for turn in range(3):
            raw = c.chat.completions.with_raw_response.create(
                model=MODEL, messages=history, max_tokens=4)
            placement.setdefault(conv, set()).add(raw.headers["x-nebula-replica"])
            history = [*history, {"role": "assistant", "content": raw.parse().choices[0]
                                  .message.content or ""},
                       {"role": "user", "content": f"turn {turn}"}]
    assert all(len(replicas) == 1 for replicas in placement.values()), placement
    # distinct conversations (cache misses) spread over the replicas
    assert len(set().union(*placement.values())) >= 2
    text = http_get(f"{router}/metrics")[1].decode()
    assert metric_value(text, "nebula_router_policy_decisions_total", policy="prefix",
                        reason="prefix_hit") >= 36


def test_policy_profile_routes_by_weighted_scores_and_is_shown(env: dict) -> None:
    cluster: Cluster = env["cluster"]
    # the preset the module's router runs, as /debug/policy shows it
    preset = json.loads(http_get(f"{env['router']}/debug/policy")[1])
    assert (preset["name"], preset["kind"], preset["needs"]) == ("least_load", "preset",
                                                                 ["session"])
    _, router = cluster.start_router(name="router-profile",
                                     args=["--policy-profile", str(PROFILE)])
    wait_router_sees(router, UID, 3)
    status, body = http_get(f"{router}/debug/policy")
    assert status == 200 and json.loads(body) == {
        "name": "prefix-weighted", "kind": "profile", "path": str(PROFILE),
        "filters": ["ready", "not-ejected", "not-overloaded"],
        "scorers": {"prefix-affinity": 1.0, "load": 2.0}, "picker": ["max-score"],
        "needs": ["prefix"]}
    c = client(router)
    system = {"role": "system", "content": "You answer in French. " * 10}
    for conv in range(6):  # one at a time: the home replica is never the busier one
        messages = [system, {"role": "user", "content": f"conversation {conv}"}]
        seen = {c.chat.completions.with_raw_response.create(
            model=MODEL, messages=messages, max_tokens=4).headers["x-nebula-replica"]
            for _ in range(3)}
        assert len(seen) == 1, (conv, seen)
    text = http_get(f"{router}/metrics")[1].decode()
    assert metric_value(text, "nebula_router_policy_decisions_total",
                        policy="prefix-weighted", reason="max_score") >= 18


def test_bad_policy_profile_fails_the_start_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("picker: max-score\nscorers: {load: -1}\n", encoding="utf-8")
    done = subprocess.run([str(BIN / "nebula-router"), "--policy-profile", str(bad)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert done.stderr == (f"nebula-router: error: {bad}: scorer 'load': the weight must be "
                           f"a number above 0, got -1\n")


def test_round_robin_spreads_evenly(env: dict) -> None:
    cluster: Cluster = env["cluster"]
    _, router = cluster.start_router(name="router-rr", args=["--policy", "round_robin"])
    wait_router_sees(router, UID, 3)
    sims: list[Sim] = env["sims"]
    wait_for(lambda: not any(r["ejected"] for r in debug_endpoints(router)), 40,
             "no ejected replica")
    c = client(router)
    seen = Counter(c.chat.completions.with_raw_response.create(**CHAT)
                   .headers["x-nebula-replica"] for _ in range(30))
    assert seen == {s.ref: 10 for s in sims}


def test_total_and_idle_timeouts_end_a_stream_with_an_error_event(env: dict) -> None:
    cluster: Cluster = env["cluster"]
    slow = start_sims(cluster, "slow", "Org/Slow", 1, "--itl-ms", "400",
                      "--output-tokens", "50")[0]
    _, total = cluster.start_router(name="router-total", args=["--total-timeout", "1"])
    _, idle = cluster.start_router(name="router-idle", args=["--idle-timeout", "0.2"])
    try:
        for router in (total, idle):
            wait_router_sees(router, "slow", 1)
            started = time.monotonic()
            with pytest.raises(openai.APIError):
                for _ in client(router).chat.completions.create(
                        model="Org/Slow", messages=CHAT["messages"], stream=True):
                    pass
            assert time.monotonic() - started < 5
            wait_for(lambda r=router: all_idle(r), 5, "in-flight back to 0")
            text = http_get(f"{router}/metrics")[1].decode()
            assert metric_value(text, "nebula_router_stream_errors_total") >= 1
        wait_for(lambda: slow.stats()["requests_cancelled"] >= 2, 3,
                 "the engine to see both streams cancelled")
    finally:
        deregister(cluster, slow)


def test_every_try_failed_is_502_and_all_ejected_routes_in_panic(env: dict) -> None:
    cluster: Cluster = env["cluster"]
    router = env["router"]  # --eject-after 2, max retries 2
    bad = start_sims(cluster, "bad", "Org/Bad", 2, "--fail-rate", "1.0")
    try:
        wait_router_sees(router, "bad", 2)
        status, body = http_post_json(f"{router}/v1/chat/completions",
                                      {**CHAT, "model": "Org/Bad"})
        assert status == 502
        err = json.loads(body)["error"]
        # the client learns what failed, not which replica where; the log says both
        assert err["message"] == "all 2 attempts failed; last: a replica answered 500"
        assert err["code"] == "upstream_failed"
        log = cluster.procs["router"].log()
        assert "last on replica bad/" in log and "simulated engine failure" in log
        status, _ = http_post_json(f"{router}/v1/chat/completions", {**CHAT, "model": "Org/Bad"})
        assert status == 502  # second failure of each replica: both ejected now
        rows = [r for r in debug_endpoints(router) if r["model_uid"] == "bad"]
        assert all(r["ejected"] for r in rows), rows
        # Every ready replica ejected: panic routing still tries them (a wrong ejection must
        # not take the model down); these really are broken, so the answer is a clear 502.
        status, body = http_post_json(f"{router}/v1/chat/completions",
                                      {**CHAT, "model": "Org/Bad"})
        assert status == 502 and json.loads(body)["error"]["code"] == "upstream_failed"
        assert sum(s.stats()["requests_total"] for s in bad) == 6
        wait_for(lambda: all_idle(router), 5, "in-flight back to 0")
    finally:
        for s in bad:
            deregister(cluster, s)


def test_authorization_never_logged(env: dict) -> None:
    secret = "sk-nebula-secret-4242"
    cluster: Cluster = env["cluster"]
    marker = '"logger":"nebula.router.access"'
    before = cluster.procs["router"].log().count(marker)
    c = openai.OpenAI(base_url=f"{env['router']}/v1", api_key=secret, max_retries=0)
    c.chat.completions.create(**CHAT)
    # access lines are written in batches (within 50 ms): wait for this request's
    log = wait_for(lambda: (text := cluster.procs["router"].log()).count(marker) > before
                   and text, 5, "the request's access line")
    assert secret not in log


def test_uvicorn_http_server_option(env: dict) -> None:
    pytest.importorskip("uvicorn")
    cluster: Cluster = env["cluster"]
    _, router = cluster.start_router(name="router-uvicorn", args=["--http-server", "uvicorn"])
    wait_router_sees(router, UID, 3)
    c = client(router)
    assert c.chat.completions.create(**CHAT).choices[0].message.content
    assert len(list(c.chat.completions.create(**CHAT, stream=True))) >= 3
    sims: list[Sim] = env["sims"]
    before = sum(s.stats()["requests_cancelled"] for s in sims)
    stream_two_chunks_then_drop(router, {**CHAT, "stream": True, "max_tokens": 200})
    wait_for(lambda: sum(s.stats()["requests_cancelled"] for s in sims) > before, 1.0,
             "the sim to see the cancel")
    wait_for(lambda: all_idle(router), 5, "in-flight back to 0")
