"""The gateway end to end: real etcd, sim engines, a router and gateways as processes,
the official ``openai`` client (sync and async) against the gateway.

Sim engines are started here and registered the way a node would (NodeStatus,
Endpoint and PlacementPlan records written straight into etcd). One sim is
registered under engine ``llamacpp`` so that the gateway translates
``/v1/responses`` over chat completions for it; the other (engine ``sim``) serves
Responses natively. Two more share a name: one's uid is the other's name.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import openai
import pytest

from devtools.cluster import BIN, Cluster, free_port, http_get, wait_for
from nebula_common.keys import Keys
from nebula_common.records import Assignment, Endpoint, NodeStatus, PlacementPlan
from nebula_common.store import EtcdStore
from tests.support.openai_schema import SchemaChecker
from tests.support.openai_schema import checker as shared_checker
from tests.unit.gateway.test_validation import CASES

QWEN = "Qwen/Qwen2.5-0.5B-Instruct"  # native Responses (engine sim)
LLAMA = "tiny/llama-translated"  # engine llamacpp: the gateway translates Responses
SLOW = "slow/model"  # long time to first token, for concurrency limits
CUT_NATIVE = "cut/native"  # streams cut by the engine after a few frames
CUT_TRANSLATED = "cut/translated"
TWIN = "twin"  # ALPHA's name and BETA's uid
ALPHA_UID, BETA_NAME = "alpha-uid", "beta-name"
KEYS = {"good": "sk-good-0123456789", "rate": "sk-rate-0123456789",
        "conc": "sk-conc-0123456789", "limited": "sk-limited-0123456789",
        "alpha": "sk-alpha-0123456789", "alice": "sk-alice-0123456789",
        "bob": "sk-bob-0123456789"}


class Reply:
    """A plain HTTP answer (urllib; the openai client covers the SDK side)."""

    def __init__(self, status: int, headers: Any, body: bytes):
        self.status_code = status
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.content = body

    @property
    def text(self) -> str:
        return self.content.decode()

    def json(self) -> Any:
        return json.loads(self.content)


def request(method: str, url: str, *, json_body: Any = None, content: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 30) -> Reply:
    data = json.dumps(json_body).encode() if json_body is not None else content
    hdrs = {"content-type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Reply(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.headers, exc.read())


def post(url: str, **kw: Any) -> Reply:
    return request("POST", url, **kw)


def get(url: str) -> Reply:
    return request("GET", url)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def start_sim(cluster: Cluster, uid: str, name: str, engine: str, *extra: str,
              capabilities: Sequence[str] = ()) -> str:
    """Start a sim engine and register it as a node would (declaring ``capabilities`` for
    the engine it stands in for); returns its base URL."""
    _, url = cluster.start_sim(f"sim-{uid}", name, [uid], list(extra))
    keys = Keys(cluster.prefix)
    plan = PlacementPlan(model_uid=uid, model_name=name, engine=engine, version=1,
                         assignments=[Assignment(replica_id="r0", node_id="test-node",
                                                 port=int(url.rsplit(":", 1)[1]))])
    endpoint = Endpoint(model_uid=uid, model_name=name, replica_id="r0", node_id="test-node",
                        base_url=url, engine=engine, status="ready", plan_version=1,
                        capabilities=list(capabilities))

    async def write(store: EtcdStore) -> None:
        # the router routes only to endpoints on a live node's advertised host
        await store.put(keys.node("test-node"), NodeStatus("test-node", "127.0.0.1").to_json())
        await store.put(keys.placement(uid), plan.to_json())
        await store.put(keys.endpoint(uid, "r0"), endpoint.to_json())

    cluster.with_store(write)
    return url


def wait_router_ready() -> None:
    """The router is written in parallel: wait until its console script exists."""
    import subprocess

    def works() -> bool:
        return subprocess.run([str(BIN / "nebula-router"), "--help"], capture_output=True,
                              timeout=30).returncode == 0
    wait_for(works, 60, "nebula-router --help", 1.0)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    cluster = Cluster(tmp_path_factory.mktemp("gateway") / "run")
    try:
        cluster.start_etcd()
        sims = {
            QWEN: start_sim(cluster, "qwen-sim", QWEN, "sim", "--output-tokens", "12"),
            # declared as the node's llama.cpp adapter declares it without --embedding True
            LLAMA: start_sim(cluster, "llama-sim", LLAMA, "llamacpp", "--output-tokens", "9",
                             capabilities=["chat", "completions"]),
            SLOW: start_sim(cluster, "slow-sim", SLOW, "sim", "--ttft-ms", "2500"),
            CUT_NATIVE: start_sim(cluster, "cut-native", CUT_NATIVE, "sim",
                                  "--stream-cut-after", "4", "--output-tokens", "30"),
            CUT_TRANSLATED: start_sim(cluster, "cut-translated", CUT_TRANSLATED, "llamacpp",
                                      "--stream-cut-after", "4", "--output-tokens", "30"),
            TWIN: start_sim(cluster, ALPHA_UID, TWIN, "sim"),
            BETA_NAME: start_sim(cluster, TWIN, BETA_NAME, "sim"),
        }
        wait_router_ready()
        _, router = cluster.start_router()
        wait_for(lambda: len(json.loads(http_get(f"{router}/v1/models")[1])["data"])
                 == len(sims), 30, "router sees every model")
        _, gateway = cluster.start_gateway([router], name="gateway-open",
                                           args=["--max-body-bytes", "65536",
                                                 "--body-timeout", "2"])
        keyfile = Path(cluster.run_dir) / "keys.txt"
        keyfile.write_text("\n".join([
            "# hashed keys, one per line",
            f"{sha(KEYS['rate'])} rate-team rpm=2",
            f"{sha(KEYS['conc'])} conc-team concurrency=1 models={SLOW}",
            f"{sha(KEYS['limited'])} limited-team models={LLAMA}",
            f"{sha(KEYS['alpha'])} alpha-team models={ALPHA_UID}",
            f"{sha(KEYS['alice'])} alice",
            f"{sha(KEYS['bob'])} bob",
        ]) + "\n")
        _, keyed = cluster.start_gateway(
            [f"http://127.0.0.1:{free_port()}", router], name="gateway-keyed",
            args=["--api-keys-file", str(keyfile)],
            env={"NEBULA_API_KEYS": KEYS["good"]})
        yield {"cluster": cluster, "router": router, "gateway": gateway, "keyed": keyed,
               "sims": sims}
    finally:
        cluster.stop_all(grace=5)


@pytest.fixture(scope="module")
def checker() -> SchemaChecker:
    return shared_checker()


def client(env: dict[str, Any], key: str = "unused", gateway: str = "gateway",
           **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{env[gateway]}/v1", api_key=key, max_retries=0,
                         timeout=30, **kw)


def sim_requests(env: dict[str, Any]) -> int:
    return sum(json.loads(http_get(f"{url}/sim/stats")[1])["requests_total"]
               for url in env["sims"].values())


def metric(base: str, name: str, **labels: str) -> float:
    """A metric's value at ``base`` (the keyed gateway's /metrics needs a key)."""
    text = request("GET", f"{base}/metrics",
                   headers={"authorization": f"Bearer {KEYS['good']}"}).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- models ------------------------------------------------------------------------------

def test_models_list_and_retrieve(env: dict[str, Any]) -> None:
    c = client(env)
    models = {m.id: m for m in c.models.list()}
    assert {QWEN, LLAMA, SLOW} <= set(models)
    for model in models.values():
        assert model.object == "model" and model.owned_by and isinstance(model.created, int)
    got = c.models.retrieve(QWEN)  # the id contains "/"
    assert got.id == QWEN
    with pytest.raises(openai.NotFoundError) as caught:
        c.models.retrieve("no/such-model")
    assert caught.value.body["code"] == "model_not_found"


# -- chat, completions, embeddings -----------------------------------------------------

def test_chat_non_stream_and_stream(env: dict[str, Any]) -> None:
    c = client(env)
    prompt_before = metric(env["gateway"], "nebula_gateway_prompt_tokens_total", model=QWEN)
    out = c.chat.completions.create(model=QWEN, messages=[{"role": "user", "content": "Hi"}])
    assert out.choices[0].message.content
    assert out.usage is not None and out.usage.completion_tokens > 0
    assert metric(env["gateway"], "nebula_gateway_prompt_tokens_total", model=QWEN) \
        == prompt_before + out.usage.prompt_tokens

    chunks = list(c.chat.completions.create(
        model=QWEN, messages=[{"role": "user", "content": "Hi"}], stream=True))
    assert len(chunks) > 2
    assert all(ch.usage is None for ch in chunks)  # not asked: the usage chunk is dropped
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)

    chunks = list(c.chat.completions.create(
        model=QWEN, messages=[{"role": "user", "content": "Hi"}], stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_completions_and_embeddings(env: dict[str, Any]) -> None:
    c = client(env)
    out = c.completions.create(model=QWEN, prompt="Once upon a time", max_tokens=5)
    assert out.choices[0].text
    streamed = list(c.completions.create(model=QWEN, prompt="Once", stream=True))
    assert len(streamed) > 1
    emb = c.embeddings.create(model=QWEN, input=["hello", "world"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) > 0


def test_a_model_whose_engine_lacks_embeddings_gets_400_not_a_replica_fault(
        env: dict[str, Any]) -> None:
    """The router lists what the replicas declared; the gateway refuses what the engine
    cannot serve, before anything reaches a replica (which would fail and count for it)."""
    models = json.loads(http_get(f"{env['router']}/v1/models")[1])["data"]
    declared = {m["id"]: m["nebula"].get("capabilities") for m in models}
    assert declared[LLAMA] == ["chat", "completions"] and declared[QWEN] is None
    served = sim_served(env, LLAMA)
    with pytest.raises(openai.BadRequestError) as err:
        client(env).embeddings.create(model=LLAMA, input=["hello"])
    assert err.value.status_code == 400
    assert err.value.body["code"] == "model_not_supported" and err.value.body["param"] == "model"
    assert "does not support embeddings" in err.value.body["message"]
    assert sim_served(env, LLAMA) == served
    # what it declared it still serves, Responses translated onto chat completions
    out = client(env).responses.create(model=LLAMA, input="Hi", max_output_tokens=4)
    assert out.output_text and sim_served(env, LLAMA) == served + 1


async def test_async_client_chat_and_responses(env: dict[str, Any]) -> None:
    c = openai.AsyncOpenAI(base_url=f"{env['gateway']}/v1", api_key="x", max_retries=0)
    try:
        out = await c.chat.completions.create(
            model=QWEN, messages=[{"role": "user", "content": "Hi"}])
        assert out.choices[0].message.content
        stream = await c.chat.completions.create(
            model=QWEN, messages=[{"role": "user", "content": "Hi"}], stream=True)
        assert len([ch async for ch in stream]) > 1
        for model in (QWEN, LLAMA):
            resp = await c.responses.create(model=model, input="Hello")
            assert resp.output_text
            events = [e.type async for e in await c.responses.create(
                model=model, input="Hello", stream=True)]
            assert events[0] == "response.created" and events[-1] == "response.completed"
    finally:
        await c.close()


# -- responses ---------------------------------------------------------------------------

def engine_chat_usage(env: dict[str, Any], model: str, messages: list[dict[str, Any]]
                      ) -> dict[str, Any]:
    """What the engine itself counts for the chat request the gateway sends."""
    resp = post(f"{env['sims'][model]}/v1/chat/completions",
                json_body={"model": model, "messages": messages})
    return resp.json()["usage"]


@pytest.mark.parametrize("model", [QWEN, LLAMA], ids=["native", "translated"])
def test_responses_non_stream(env: dict[str, Any], model: str) -> None:
    c = client(env)
    resp = c.responses.create(model=model, input="Tell me a story",
                              instructions="Be brief.")
    assert resp.object == "response" and resp.status == "completed"
    assert resp.output_text
    assert resp.usage is not None and resp.usage.output_tokens > 0
    if model == LLAMA:
        usage = engine_chat_usage(env, model, [{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": "Tell me a story"}])
        assert (resp.usage.input_tokens, resp.usage.output_tokens) == (
            usage["prompt_tokens"], usage["completion_tokens"])


@pytest.mark.parametrize("model", [QWEN, LLAMA], ids=["native", "translated"])
def test_responses_stream_events_validate(env: dict[str, Any], model: str,
                                          checker: SchemaChecker) -> None:
    resp = post(f"{env['gateway']}/v1/responses",
                json_body={"model": model, "input": "Hello there", "stream": True})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    raw = resp.content
    frames = [f for f in raw.split(b"\n\n") if f.strip()]
    events = []
    for frame in frames:
        lines = dict(line.split(b": ", 1) for line in frame.split(b"\n") if b": " in line)
        event = json.loads(lines[b"data"])
        assert lines[b"event"].decode() == event["type"]
        events.append(event)
    types = [e["type"] for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert "response.output_text.delta" in types
    numbers = [e["sequence_number"] for e in events]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    if model == LLAMA:  # our own translation: every event checked against OpenAI's schema
        for event in events:
            checker.check_event(event)
        usage = engine_chat_usage(env, model, [{"role": "user", "content": "Hello there"}])
        final = events[-1]["response"]["usage"]
        assert (final["input_tokens"], final["output_tokens"]) == (
            usage["prompt_tokens"], usage["completion_tokens"])
    sdk_events = list(client(env).responses.create(model=model, input="Hi", stream=True))
    assert sdk_events[-1].type == "response.completed"
    assert sdk_events[-1].response.output_text


@pytest.mark.parametrize("model", [QWEN, LLAMA], ids=["native", "translated"])
def test_previous_response_id_follow_up(env: dict[str, Any], model: str) -> None:
    c = client(env)
    first = c.responses.create(model=model, input="My name is Ada.")
    second = c.responses.create(model=model, input="What is my name?",
                                previous_response_id=first.id)
    assert second.status == "completed"
    # the follow-up carried the whole conversation: more input tokens than the question
    alone = c.responses.create(model=model, input="What is my name?")
    assert second.usage.input_tokens > alone.usage.input_tokens
    streamed = list(c.responses.create(model=model, input="And again?", stream=True,
                                       previous_response_id=second.id))
    assert streamed[-1].type == "response.completed"
    with pytest.raises(openai.BadRequestError) as caught:
        c.responses.create(model=model, input="x", previous_response_id="resp_unknown")
    assert caught.value.body["param"] == "previous_response_id"


def test_translated_responses_accept_tools_and_json_schema(env: dict[str, Any]) -> None:
    """Function tools and text.format json_schema go through the translation to the engine."""
    c = client(env)
    resp = c.responses.create(
        model=LLAMA, input=[{"role": "user", "content": [
            {"type": "input_text", "text": "Weather in Paris as JSON"}]}],
        tools=[{"type": "function", "name": "get_weather", "strict": True,
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"], "additionalProperties": False}}],
        tool_choice="auto",
        text={"format": {"type": "json_schema", "name": "weather", "strict": True,
                         "schema": {"type": "object", "properties": {"t": {"type": "number"}},
                                    "required": ["t"], "additionalProperties": False}}})
    assert resp.status == "completed" and resp.output
    with pytest.raises(openai.BadRequestError) as caught:
        c.responses.create(model=LLAMA, input="x", tools=[{"type": "web_search"}])
    assert caught.value.body["param"] == "tools[0].type"


# -- bad input -------------------------------------------------------------------------

def test_malformed_requests_never_reach_the_router(env: dict[str, Any]) -> None:
    gateway = env["gateway"]
    before = sim_requests(env)
    router_before = metric(env["router"], "nebula_router_requests_total")
    cases = [(path, raw, status, param) for path, raw, status, param in CASES
             if status != 413]
    big = json.dumps({"model": QWEN, "messages": [{"role": "user",
                                                   "content": "x" * 70000}]}).encode()
    cases.append(("/v1/chat/completions", big, 413, None))
    cases.append(("/v1/chat/completions", json.dumps(
        {"model": "no/such", "messages": [{"role": "user", "content": "x"}]}).encode(),
        404, "model"))
    assert len(cases) >= 30
    for path, raw, status, param in cases:
        resp = post(gateway + path, content=raw)
        assert resp.status_code == status, (path, raw[:80], resp.text)
        error = resp.json()["error"]
        assert error["param"] == param, (path, raw[:80], error)
        assert error["message"] and error["type"]
        assert resp.headers["x-request-id"]
    assert sim_requests(env) == before
    assert metric(env["router"], "nebula_router_requests_total") == router_before
    # and the gateway is fine afterwards
    assert client(env).chat.completions.create(
        model=QWEN, messages=[{"role": "user", "content": "ok?"}]).choices


def test_unknown_model_404_malformed_json_400_and_request_id(env: dict[str, Any]) -> None:
    gateway = env["gateway"]
    resp = post(f"{gateway}/v1/chat/completions",
                json_body={"model": "nope", "messages": [{"role": "user", "content": "x"}]},
                headers={"x-request-id": "my-req-42"})
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "model_not_found"
    assert resp.headers["x-request-id"] == "my-req-42"
    resp = post(f"{gateway}/v1/chat/completions", content=b"{oops",
                headers={"x-request-id": "bad id with spaces"})
    assert resp.status_code == 400
    assert resp.headers["x-request-id"] != "bad id with spaces"
    # content-type is tolerated when the body is JSON
    resp = post(f"{gateway}/v1/chat/completions",
                content=json.dumps({"model": QWEN, "messages": [
                    {"role": "user", "content": "x"}]}).encode(),
                headers={"content-type": "text/plain", "x-request-id": "ok-1"})
    assert resp.status_code == 200 and resp.headers["x-request-id"] == "ok-1"
    resp = get(f"{gateway}/v1/nothing-here")
    assert resp.status_code == 404 and "error" in resp.json()
    resp = get(f"{gateway}/v1/chat/completions")
    assert resp.status_code == 405 and "POST" in resp.headers["allow"]
    assert resp.json()["error"]["code"] == "method_not_allowed"
    assert get(f"{gateway}/healthz").text == "ok"
    assert get(f"{gateway}/readyz").status_code == 200
    doc = get(f"{gateway}/openapi.json").json()
    assert doc["openapi"].startswith("3.1") and "/v1/responses" in doc["paths"]


# -- auth and limits -------------------------------------------------------------------

def test_auth_missing_wrong_and_good_key(env: dict[str, Any]) -> None:
    keyed = env["keyed"]
    resp = post(f"{keyed}/v1/chat/completions",
                json_body={"model": QWEN, "messages": [{"role": "user", "content": "x"}]})
    assert resp.status_code == 401 and resp.json()["error"]["type"] == "invalid_request_error"
    assert resp.headers["x-request-id"]
    with pytest.raises(openai.AuthenticationError) as caught:
        client(env, "sk-wrong", gateway="keyed").models.list()
    assert caught.value.body["code"] == "invalid_api_key"
    good = client(env, KEYS["good"], gateway="keyed")
    assert good.chat.completions.create(
        model=QWEN, messages=[{"role": "user", "content": "x"}]).choices
    assert get(keyed + "/healthz").status_code == 200
    for path in ("/metrics", "/openapi.json"):  # they tell models, key names and traffic
        assert get(keyed + path).status_code == 401, path
        assert request("GET", keyed + path,
                       headers={"authorization": f"Bearer {KEYS['good']}"}).status_code == 200
    for path in ("/debug/endpoints", "/debug/policy", "/debug/table", "/logs"):
        assert get(keyed + path).status_code == 404, path  # the router's and node's stay inside
    metrics_text = request("GET", keyed + "/metrics",
                           headers={"authorization": f"Bearer {KEYS['good']}"}).text
    for secret in KEYS.values():
        assert secret not in metrics_text
    log = env["cluster"].procs["gateway-keyed"].log()
    for secret in KEYS.values():
        assert secret not in log
    assert 'key="env0"' in metrics_text  # the label is a name, never the key


def test_rate_limit_429_with_retry_after(env: dict[str, Any]) -> None:
    c = client(env, KEYS["rate"], gateway="keyed")
    for _ in range(2):
        c.chat.completions.create(model=QWEN, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.RateLimitError) as caught:
        c.chat.completions.create(model=QWEN, messages=[{"role": "user", "content": "x"}])
    assert caught.value.body["type"] == "rate_limit_error"
    assert int(caught.value.response.headers["retry-after"]) >= 1


def test_concurrency_limit_429(env: dict[str, Any]) -> None:
    keyed = env["keyed"]
    c = client(env, KEYS["conc"], gateway="keyed")
    result: dict[str, Any] = {}

    def slow() -> None:
        result["out"] = c.chat.completions.create(
            model=SLOW, messages=[{"role": "user", "content": "x"}])

    thread = threading.Thread(target=slow)
    thread.start()
    try:
        wait_for(lambda: metric(keyed, "nebula_gateway_in_flight_requests") >= 1, 10,
                 "the slow request in flight")
        with pytest.raises(openai.RateLimitError) as caught:
            c.chat.completions.create(model=SLOW, messages=[{"role": "user", "content": "y"}])
        assert caught.value.body["code"] == "concurrency_limit_exceeded"
    finally:
        thread.join(30)
    assert result["out"].choices
    # the slot is free again once the first request finished
    assert c.chat.completions.create(model=SLOW, messages=[
        {"role": "user", "content": "z"}]).choices


def test_model_allow_list(env: dict[str, Any]) -> None:
    c = client(env, KEYS["limited"], gateway="keyed")
    with pytest.raises(openai.PermissionDeniedError):
        c.chat.completions.create(model=QWEN, messages=[{"role": "user", "content": "x"}])
    assert [m.id for m in c.models.list()] == [LLAMA]
    assert c.chat.completions.create(model=LLAMA, messages=[
        {"role": "user", "content": "x"}]).choices


def test_router_failover(env: dict[str, Any]) -> None:
    """The keyed gateway's first router URL is dead: requests still succeed."""
    keyed = env["keyed"]
    c = client(env, KEYS["good"], gateway="keyed")
    start = time.monotonic()
    assert c.chat.completions.create(model=QWEN, messages=[
        {"role": "user", "content": "x"}]).choices
    assert time.monotonic() - start < 10
    assert metric(keyed, "nebula_gateway_router_failovers_total") >= 1


# -- broken streams and clients that go away ---------------------------------------------

@pytest.mark.parametrize("model", [CUT_NATIVE, CUT_TRANSLATED], ids=["native", "translated"])
def test_stream_cut_mid_way_is_an_error_not_a_silent_end(env: dict[str, Any],
                                                         model: str) -> None:
    c = client(env)
    with pytest.raises(openai.APIError):
        for _ in c.responses.create(model=model, input="Hello", stream=True):
            pass
    if model == CUT_NATIVE:
        with pytest.raises(openai.APIError):
            for _ in c.chat.completions.create(model=model, stream=True, messages=[
                    {"role": "user", "content": "Hello"}]):
                pass
    wait_for(lambda: metric(env["gateway"], "nebula_gateway_in_flight_requests") == 0, 10,
             "no request left in flight")


def test_client_gone_before_first_token_frees_everything(env: dict[str, Any]) -> None:
    keyed = env["keyed"]
    slow_sim = env["sims"][SLOW]
    cancelled = json.loads(http_get(f"{slow_sim}/sim/stats")[1])["requests_cancelled"]
    body = json.dumps({"model": SLOW, "stream": True,
                       "messages": [{"role": "user", "content": "x"}]}).encode()
    host, port = keyed.rsplit("/", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + KEYS["conc"].encode() + b"\r\n"
                     b"Content-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        wait_for(lambda: metric(keyed, "nebula_gateway_in_flight_requests") >= 1, 10,
                 "the request in flight")
    started = time.monotonic()
    wait_for(lambda: metric(keyed, "nebula_gateway_in_flight_requests") == 0, 10,
             "in-flight back to zero after the client left")
    wait_for(lambda: json.loads(http_get(f"{slow_sim}/sim/stats")[1])["requests_cancelled"]
             > cancelled, 10, "the engine request cancelled")
    assert time.monotonic() - started < 2.4  # sooner than the engine's first token
    # the key's only concurrency slot is free again
    assert client(env, KEYS["conc"], gateway="keyed").chat.completions.create(
        model=SLOW, messages=[{"role": "user", "content": "again"}]).choices


def test_slow_body_gets_408_and_gateway_stays_healthy(env: dict[str, Any]) -> None:
    host, port = env["gateway"].rsplit("/", 1)[1].split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(4096)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < 8
    assert client(env).chat.completions.create(
        model=QWEN, messages=[{"role": "user", "content": "still there?"}]).choices


# -- issue 20: the trust boundary --------------------------------------------------------

def sim_served(env: dict[str, Any], model: str) -> int:
    return int(json.loads(http_get(f"{env['sims'][model]}/sim/stats")[1])["requests_total"])


def test_a_key_is_served_the_model_it_was_allowed_when_a_uid_is_another_name(
        env: dict[str, Any]) -> None:
    """ALPHA is named "twin", BETA's uid is "twin"; a key allowed only ALPHA asks for
    "twin". The gateway resolves the name (ALPHA) and allows it; the router, left to
    itself, resolves the uid first (BETA): the uid forwarded keeps it on ALPHA."""
    c = client(env, KEYS["alpha"], gateway="keyed")
    alpha, beta = sim_served(env, TWIN), sim_served(env, BETA_NAME)
    for _ in range(3):
        assert c.chat.completions.create(
            model=TWIN, messages=[{"role": "user", "content": "x"}]).choices
    assert (sim_served(env, TWIN), sim_served(env, BETA_NAME)) == (alpha + 3, beta)
    with pytest.raises(openai.PermissionDeniedError):  # BETA by its own name: not this key's
        c.chat.completions.create(model=BETA_NAME, messages=[{"role": "user", "content": "x"}])


def test_replica_names_stay_inside(env: dict[str, Any]) -> None:
    resp = post(f"{env['gateway']}/v1/chat/completions",
                json_body={"model": QWEN, "messages": [{"role": "user", "content": "x"}]})
    assert resp.status_code == 200 and "x-nebula-replica" not in resp.headers


def test_no_keys_on_a_network_address_refuses_to_start() -> None:
    done = subprocess.run([str(BIN / "nebula-gateway"), "--listen", f"0.0.0.0:{free_port()}",
                           "--router-url", "http://127.0.0.1:9"],
                          capture_output=True, text=True, timeout=30,
                          env={**{k: v for k, v in os.environ.items()
                                  if not k.startswith("NEBULA_")}, "NEBULA_LOG_FORMAT": "text"})
    assert done.returncode == 2, done
    assert done.stderr.strip().count("\n") == 0 and "--allow-anonymous" in done.stderr


@pytest.mark.parametrize("model", [QWEN, LLAMA], ids=["native", "translated"])
def test_stored_responses_retrieve_list_delete_per_key(env: dict[str, Any], model: str) -> None:
    alice = client(env, KEYS["alice"], gateway="keyed")
    bob = client(env, KEYS["bob"], gateway="keyed")
    first = alice.responses.create(model=model, input=[
        {"role": "user", "content": [{"type": "input_text", "text": "My name is Ada."}]}],
        extra_body={"metadata": {"big": "z" * 1000}})
    second = alice.responses.create(model=model, input="What is my name?",
                                    previous_response_id=first.id)
    got = alice.responses.retrieve(second.id)
    assert (got.id, got.status, got.output_text) == (second.id, "completed",
                                                     second.output_text)
    items = list(alice.responses.input_items.list(second.id, order="asc"))
    assert [i.type for i in items] == ["message", "message", "message"]
    assert [getattr(i, "role", None) for i in items] == ["user", "assistant", "user"]
    assert all(i.id for i in items)
    page = alice.responses.input_items.list(second.id, limit=1)
    assert page.has_more and len(page.data) == 1  # newest first by default
    # another key: those responses do not exist
    for call in (lambda: bob.responses.retrieve(second.id),
                 lambda: bob.responses.input_items.list(second.id),
                 lambda: bob.responses.delete(second.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.BadRequestError) as caught:
        bob.responses.create(model=model, input="x", previous_response_id=second.id)
    assert caught.value.body["code"] == "previous_response_not_found"
    alice.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        alice.responses.retrieve(second.id)
    assert alice.responses.retrieve(first.id).id == first.id  # only that one went
