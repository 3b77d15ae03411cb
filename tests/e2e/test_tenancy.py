"""Tenancy end to end: run-time keys, token budgets and shared Responses on real parts.

Real etcd, a sim engine registered as a node would, a router, gateways as processes
(``--watch-keys on``), a real redis-server shared by two of them and SQLite for another,
the ``nebula`` CLI and the official ``openai`` client.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import redis

from devtools.cluster import Cluster, http_get, wait_for
from tests.e2e.test_gateway import start_sim, wait_router_ready
from tests.support.redis import RedisServer

MODEL = "tenant/model"
OUTPUT = 100  # tokens the sim generates per request (max_tokens in the budget runs)
BUDGET = 10_000


class Env:
    def __init__(self, cluster: Cluster, router: str, redis_server: RedisServer,
                 state_dir: Path):
        self.cluster = cluster
        self.router = router
        self.redis = redis_server
        self.state_dir = state_dir
        self.gateways: dict[str, str] = {}
        self.args: dict[str, list[str]] = {}

    def start_gateway(self, name: str, *args: str, port: int = 0) -> str:
        full = ["--watch-keys", "on", *args]
        _, url = self.cluster.start_gateway([self.router], name=name, args=full, port=port)
        wait_for(lambda: http_get(f"{url}/readyz")[0] == 200, 30, f"{name} ready")
        self.gateways[name], self.args[name] = url, list(args)
        return url

    def restart(self, name: str) -> str:
        url = self.gateways[name]
        self.cluster.procs[name].stop(grace=10)
        return self.start_gateway(name, *self.args[name], port=int(url.rsplit(":", 1)[1]))

    def keys(self, *args: str) -> str:
        out = self.cluster.nebula("keys", *args)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def create_key(self, name: str, *limits: str) -> str:
        """A new key's secret (the last line `nebula keys create` prints)."""
        return self.keys("create", name, "--models", MODEL, *limits).strip().splitlines()[-1]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("tenancy")
    cluster = Cluster(root / "run")
    server = RedisServer(root / "redis")
    try:
        cluster.start_etcd()
        server.start()
        start_sim(cluster, "tenant-sim", MODEL, "sim", "--output-tokens", "20",
                  "--itl-ms", "1")
        wait_router_ready()
        _, router = cluster.start_router()
        wait_for(lambda: json.loads(http_get(f"{router}/v1/models")[1])["data"], 30,
                 "router sees the model")
        e = Env(cluster, router, server, root / "gw-sqlite")
        e.start_gateway("gw-a", "--state-url", server.url)
        e.start_gateway("gw-b", "--state-url", server.url)
        e.start_gateway("gw-sqlite", "--state-dir", str(e.state_dir))
        yield e
    finally:
        cluster.stop_all(grace=5)
        server.stop()


def chat(base: str, secret: str, max_tokens: int = 5) -> tuple[int, dict[str, Any], str]:
    import urllib.error
    import urllib.request
    req = urllib.request.Request(
        f"{base}/v1/chat/completions", method="POST",
        data=json.dumps({"model": MODEL, "max_tokens": max_tokens,
                         "messages": [{"role": "user", "content": "hi"}]}).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {secret}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read()), resp.headers.get("retry-after", "")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers.get("retry-after", "")


def until(status: int, base: str, secret: str, timeout: float) -> float:
    """Seconds until ``base`` answers ``status`` to ``secret`` (polled every 20 ms)."""
    start = time.monotonic()
    wait_for(lambda: chat(base, secret)[0] == status, timeout, f"{status} from {base}", 0.02)
    return time.monotonic() - start


def test_create_use_update_revoke_on_two_gateways(env: Env) -> None:
    secret = env.create_key("team-life", "--rpm", "1000")
    a, b = env.gateways["gw-a"], env.gateways["gw-b"]
    for base in (a, b):
        reach(base, secret)
    listed = json.loads(env.keys("list", "--json"))
    row = next(r for r in listed if r["name"] == "team-life")
    assert row["models"] == [MODEL] and row["rpm"] == 1000 and "key_hash" in row
    assert secret not in json.dumps(listed)  # only the hash is kept
    # a change applies without a restart: this key may no longer use the model
    env.keys("update", "team-life", "--models", "other/model")
    for base in (a, b):
        assert until(403, base, secret, 1.0) < 1.0
    env.keys("update", "team-life", "--models", MODEL)
    for base in (a, b):
        reach(base, secret)
    env.keys("revoke", "team-life")
    revoked_at = time.monotonic()
    for base in (a, b):
        until(401, base, secret, 1.0)
    assert time.monotonic() - revoked_at < 1.0, "revocation took a second or more"
    status, body, _ = chat(b, secret)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"


def test_rpm_holds_across_two_gateways(env: Env) -> None:
    """A key with rpm 10 on two gateways sharing Redis: ten requests in the minute, however
    they are spread, and the eleventh (on either) is a 429 that names the limit."""
    if time.time() % 60 > 40:  # the counter is per UTC minute: start a fresh one
        time.sleep(60.5 - time.time() % 60)
    secret = env.create_key("rpm-shared", "--rpm", "10")
    a, b = env.gateways["gw-a"], env.gateways["gw-b"]
    for base in (a, b):
        reach(base, secret)  # one request each (the 401s before the key arrives do not count)
    for i in range(8):  # 4 more on each: 6 per gateway, under each one's own bucket of 10
        status, body, _ = chat(a if i % 2 else b, secret)
        assert status == 200, body
    for base in (a, b):
        status, body, retry_after = chat(base, secret)
        assert status == 429, body
        assert body["error"]["code"] == "rate_limit_exceeded"
        assert "rate limit of 10 requests per minute" in body["error"]["message"]
        assert "across every gateway" in body["error"]["message"]
        assert 1 <= int(retry_after) <= 60


def test_keys_cli_refuses_bad_input_in_one_line(env: Env) -> None:
    cases = [(("create", "half-budget", "--budget-tokens", "5"), "--budget-period"),
             (("create", "anonymous"), "not 'anonymous'"),
             (("revoke", "nobody-has-this-name"), "no key named"),
             (("update", "nobody-has-this-name", "--rpm", "1"), "no key named")]
    for args, says in cases:
        out = env.cluster.nebula("keys", *args)
        assert out.returncode == 1 and says in out.stderr, (args, out.stderr)
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    env.keys("create", "once")
    out = env.cluster.nebula("keys", "create", "once")
    assert out.returncode == 1 and "exists already" in out.stderr
    env.keys("revoke", "once")
    out = env.cluster.nebula("keys", "revoke", "once")
    assert out.returncode == 1  # a revoked key has no name any more: by id only
    assert "revoked" in env.keys("list", "--all")


async def drive(bases: list[str], secret: str, total: int, parallel: int
                ) -> list[tuple[int, dict[str, Any], str]]:
    """``total`` chat requests, at most ``parallel`` at once, spread over ``bases``."""
    gate = asyncio.Semaphore(parallel)
    body = {"model": MODEL, "max_tokens": OUTPUT,
            "messages": [{"role": "user", "content": "count the tokens of this request"}]}
    headers = {"authorization": f"Bearer {secret}"}

    async def one(session: aiohttp.ClientSession, i: int) -> tuple[int, dict[str, Any], str]:
        async with gate, session.post(f"{bases[i % len(bases)]}/v1/chat/completions",
                                      json=body, headers=headers) as resp:
            return resp.status, await resp.json(), resp.headers.get("retry-after", "")

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        return await asyncio.gather(*(one(session, i) for i in range(total)))


def usage_rows(env: Env, url: str) -> list[dict[str, Any]]:
    out = env.cluster.nebula("usage", "--state-url", url, "--json")
    assert out.returncode == 0, out.stderr
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


def reach(base: str, secret: str) -> int:
    """Wait until ``base`` serves ``secret`` (the key reached it); the tokens that cost."""
    def served() -> int:
        status, body, _ = chat(base, secret)
        return int(body["usage"]["total_tokens"]) if status == 200 else 0
    return wait_for(served, 5, f"{base} serving the new key", 0.02)


@pytest.mark.parametrize("setup", ["redis-two-gateways", "sqlite-one-gateway"])
def test_budget_holds_under_concurrency(env: Env, setup: str) -> None:
    name = f"budget-{setup}"
    secret = env.create_key(name, "--budget-tokens", str(BUDGET), "--budget-period", "day")
    bases = ([env.gateways["gw-a"], env.gateways["gw-b"]] if setup.startswith("redis")
             else [env.gateways["gw-sqlite"]])
    probes = sum(reach(base, secret) for base in bases)
    results = asyncio.run(drive(bases, secret, 200, 50))
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] != 200]
    served = probes + sum(r[1]["usage"]["total_tokens"] for r in ok)
    assert served <= BUDGET + OUTPUT, served
    assert ok and refused, "the run must both serve and refuse"
    for status, body, retry_after in refused:
        assert status == 429, body
        assert body["error"]["code"] == "token_budget_exceeded"
        assert "token budget of 10000 tokens per day" in body["error"]["message"]
        assert int(retry_after) >= 1
    print(f"\n{setup}: {len(ok)} of 200 served, {served} tokens of a {BUDGET} budget "
          f"(unused {BUDGET - served}), {len(refused)} refused with 429")
    url = env.redis.url if setup.startswith("redis") else \
        f"sqlite:///{env.state_dir / 'state.db'}"

    def counted() -> bool:
        row = next((r for r in usage_rows(env, url) if r["key"] == name), None)
        return row is not None and row["requests"] == len(ok) + len(bases) and \
            row["prompt_tokens"] + row["completion_tokens"] == served
    wait_for(counted, 10, "usage written to the state store", 0.5)


@pytest.mark.parametrize("thread", ["previous_response_id", "conversation"])
def test_conversation_across_gateways_survives_a_restart(env: Env, thread: str) -> None:
    """Five turns alternating between two gateways on one Redis, one restarted after the
    second turn: every turn sees the earlier ones."""
    secret = env.create_key(f"convo-{thread}")
    names = ["gw-a", "gw-b"]
    for name in names:
        reach(env.gateways[name], secret)

    def client(turn: int) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{env.gateways[names[turn % 2]]}/v1", api_key=secret,
                             max_retries=0, timeout=30)

    conversation = client(1).conversations.create(metadata={"topic": "e2e"}) \
        if thread == "conversation" else None
    previous: str | None = None
    said: list[str] = []
    for turn in range(5):
        if turn == 2:
            env.restart("gw-b")  # its memory is gone; Redis still has every turn
        text = f"turn {turn}: remember the word w{turn}"
        said.append(text)
        kwargs: dict[str, Any] = {}
        if conversation is not None:
            kwargs["conversation"] = conversation.id
        elif previous:
            kwargs["previous_response_id"] = previous
        resp = client(turn).responses.create(model=MODEL, input=text, max_output_tokens=8,
                                             **kwargs)
        previous = resp.id
        if conversation is not None:
            items = client(turn + 1).conversations.items.list(conversation.id, order="asc",
                                                              limit=100).data
        else:
            items = client(turn + 1).responses.input_items.list(resp.id, order="asc",
                                                                limit=100).data
        users = [part.text for item in items if getattr(item, "role", "") == "user"
                 for part in item.content]  # type: ignore[union-attr]
        assert users == said, f"turn {turn} on {names[turn % 2]} lost earlier turns"
        assistants = [item for item in items if getattr(item, "role", "") == "assistant"]
        assert len(assistants) == turn + (1 if conversation is not None else 0)
    if conversation is not None:
        client(0).conversations.delete(conversation.id)
        with pytest.raises(openai.NotFoundError):
            client(1).conversations.retrieve(conversation.id)


def test_sqlite_keeps_responses_across_a_restart(env: Env) -> None:
    secret = env.create_key("sqlite-convo")
    base = env.gateways["gw-sqlite"]
    reach(base, secret)
    first = openai.OpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0).responses \
        .create(model=MODEL, input="one", max_output_tokens=4)
    base = env.restart("gw-sqlite")
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0)
    second = client.responses.create(model=MODEL, input="two", max_output_tokens=4,
                                     previous_response_id=first.id)
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens


def test_redis_killed_mid_run_fails_nothing_and_reconciles(env: Env, tmp_path: Path) -> None:
    # kept on disk at every write: what it counted before the kill is there after it
    server = RedisServer(tmp_path / "redis-chaos",
                         args=["--appendonly", "yes", "--appendfsync", "always"]).start()
    try:
        base = env.start_gateway("gw-chaos", "--state-url", server.url)
        name = "chaos"
        secret = env.create_key(name, "--tpm", "10000000", "--budget-tokens", "100000000",
                                "--budget-period", "month")
        probe = reach(base, secret)

        async def run() -> list[tuple[int, dict[str, Any], str]]:
            first = asyncio.ensure_future(drive([base], secret, 120, 8))
            await asyncio.sleep(1.0)
            server.kill()
            out = await first
            more = await drive([base], secret, 40, 8)  # all on local state
            return out + more

        results = asyncio.run(run())
        assert [r[0] for r in results if r[0] != 200] == [], "a request failed"
        assert metric(base, secret, "nebula_gateway_state_degraded") == 1.0
        server.start()
        wait_for(lambda: metric(base, secret, "nebula_gateway_state_degraded") == 0.0, 10,
                 "the gateway back on Redis")
        served = probe + sum(r[1]["usage"]["total_tokens"] for r in results)
        client = redis.Redis.from_url(server.url)
        used = sum(int(client.get(k) or 0) for k in client.scan_iter("nebula:gw:used:*budget*"))
        assert used == served, "the budget counter lost or doubled tokens"

        def counted() -> bool:
            row = next((r for r in usage_rows(env, server.url) if r["key"] == name), None)
            return row is not None and row["requests"] == len(results) + 1
        wait_for(counted, 10, "usage reconciled", 0.5)
        print(f"\nredis killed mid-run: {len(results)} requests, none failed; "
              f"{served} tokens served, {used} counted after reconcile")
    finally:
        env.cluster.procs["gw-chaos"].stop(grace=5)
        server.stop()


def metric(base: str, secret: str, name: str) -> float:
    import urllib.request
    req = urllib.request.Request(f"{base}/metrics",
                                 headers={"authorization": f"Bearer {secret}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return -1.0
