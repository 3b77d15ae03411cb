"""What the gateway tells a router, what it passes back, and which router it asks (against
scripted routers on loopback ports)."""

from __future__ import annotations

import hashlib
from typing import Any

from aiohttp import web

from nebula_gateway.auth import ApiKey
from nebula_gateway.config import GatewayConfig
from nebula_gateway.gateway import Gateway
from tests.unit.gateway.asgi import FakeRouter, chat, post

TWO_MODELS = [
    # one model's uid is the other one's name: "twin" names B, and is A's uid
    {"id": "twin", "nebula": {"model_uid": "uid-b", "engine": "sim"}},
    {"id": "model-a", "nebula": {"model_uid": "twin", "engine": "sim"}},
]


def keyed(name: str, **limits: Any) -> tuple[dict[str, ApiKey], dict[str, str]]:
    digest = hashlib.sha256(name.encode()).hexdigest()
    return ({digest: ApiKey(digest, name, **limits)},
            {"authorization": f"Bearer {name}"})


async def test_the_router_is_told_the_uid_the_key_was_allowed_and_the_tenant() -> None:
    keys, auth = keyed("team-b", models=frozenset({"uid-b"}), priority="high")
    async with FakeRouter(models=TWO_MODELS).running() as router:
        gateway = Gateway(GatewayConfig([router.url], keys=keys))
        answer = await post(gateway, "/v1/chat/completions", chat("twin"), {
            **auth, "x-nebula-model-uid": "twin", "x-nebula-tenant": "someone-else",
            "x-nebula-priority": "urgent"})
        await gateway.pool.close()
    assert answer.status == 200, answer.body
    sent = router.seen[-1].headers
    assert sent["x-nebula-model-uid"] == "uid-b"  # B, by name; never the caller's header
    assert sent["x-nebula-tenant"] == "team-b"
    assert sent["x-nebula-priority"] == "high"
    assert "authorization" not in sent


async def test_anonymous_callers_are_one_tenant_without_a_priority() -> None:
    async with FakeRouter().running() as router:
        gateway = Gateway(GatewayConfig([router.url]))
        answer = await post(gateway, "/v1/chat/completions", chat("m"),
                            {"x-nebula-priority": "urgent"})
        await gateway.pool.close()
    assert answer.status == 200
    sent = router.seen[-1].headers
    assert (sent["x-nebula-tenant"], sent["x-nebula-model-uid"]) == ("anonymous", "m-uid")
    assert "x-nebula-priority" not in sent


async def test_the_replica_header_reaches_clients_only_when_asked() -> None:
    async with FakeRouter().running() as router:
        hidden = Gateway(GatewayConfig([router.url]))  # the default
        answer = await post(hidden, "/v1/chat/completions", chat())
        await hidden.pool.close()
        assert answer.status == 200 and "x-nebula-replica" not in answer.headers
        shown = Gateway(GatewayConfig([router.url], expose_replica_header=True))
        answer = await post(shown, "/v1/chat/completions", chat())
        await shown.pool.close()
    assert answer.headers["x-nebula-replica"] == "m-uid/r0"


def answering(status: int, code: str | None, message: str) -> Any:
    async def answer(_: web.Request) -> web.Response:
        return web.json_response({"error": {"message": message, "type": "upstream_error",
                                            "param": None, "code": code}}, status=status)
    return answer


async def test_router_errors_reach_clients_without_replicas_or_addresses() -> None:
    cases = [
        (502, "upstream_failed", "all 3 attempts failed; last: replica m-uid/r0: "
         "Cannot connect to host 10.1.2.3:8000"),
        (503, "no_reachable_replica", "no replica of model 'm' is reachable (2 tried; last: "
         "connect to node-7.internal:10814 refused)"),
        (500, "engine_error", "engine at gpu-3.cluster.local:8001 crashed"),
    ]
    for status, code, message in cases:
        async with FakeRouter(answer=answering(status, code, message)).running() as router:
            gateway = Gateway(GatewayConfig([router.url]))
            answer = await post(gateway, "/v1/chat/completions", chat())
            await gateway.pool.close()
        assert (answer.status, answer.error["code"]) == (status, code)
        text = answer.error["message"]
        for inside in ("m-uid/r0", "10.1.2.3", "8000", "node-7", "10814", "gpu-3.cluster"):
            assert inside not in text, (inside, text)
    # a router's 4xx (the caller's own mistake) goes through as it is
    async with FakeRouter(answer=answering(400, "bad", "max_tokens too large")).running() as r:
        gateway = Gateway(GatewayConfig([r.url]))
        answer = await post(gateway, "/v1/chat/completions", chat())
        await gateway.pool.close()
    assert answer.error["message"] == "max_tokens too large"


async def routed(first: FakeRouter, second: FakeRouter) -> int:
    gateway = Gateway(GatewayConfig([first.url, second.url]))
    answer = await post(gateway, "/v1/chat/completions", chat())
    await gateway.pool.close()
    return answer.status


async def test_a_routers_502_is_not_retried_on_the_next_router() -> None:
    """The router already tried the replicas: the next router would run it all again."""
    for status, code in ((502, "upstream_failed"), (504, "timeout"), (500, None),
                         (503, "no_reachable_replica"),
                         # the router's queue already waited its class's bound
                         (503, "queue_timeout"), (429, "queue_full")):
        async with FakeRouter(answer=answering(status, code, "x")).running() as first, \
                FakeRouter().running() as second:
            assert await routed(first, second) == status
        assert len(first.seen) == 1 and not second.seen, (status, code)


async def test_the_next_router_serves_when_one_is_down_or_has_no_table() -> None:
    not_synced = answering(503, None, "the router has not loaded its endpoint table yet")
    # a router whose view is briefly short of replicas (just restarted, etcd reconnecting)
    none_ready = answering(503, "no_ready_replica", "no ready replica for model 'm'")
    for answer in (not_synced, none_ready):
        async with FakeRouter(answer=answer).running() as first, \
                FakeRouter().running() as second:
            assert await routed(first, second) == 200
        assert len(first.seen) == 1 and len(second.seen) == 1
    async with FakeRouter().running() as second:
        gateway = Gateway(GatewayConfig(["http://127.0.0.1:9", second.url]))
        answer = await post(gateway, "/v1/chat/completions", chat())
        await gateway.pool.close()
    assert answer.status == 200 and len(second.seen) == 1


async def test_the_last_good_model_list_is_served_while_refreshing_fails() -> None:
    async with FakeRouter().running() as router:
        gateway = Gateway(GatewayConfig([router.url], models_cache_seconds=0))  # stale: 60 s
        assert (await post(gateway, "/v1/chat/completions", chat())).status == 200
        router.models_status = 503  # GET /v1/models fails from now on
        for _ in range(3):
            assert (await post(gateway, "/v1/chat/completions", chat())).status == 200
        strict = Gateway(GatewayConfig([router.url], models_cache_seconds=0,
                                       models_stale_seconds=0))
        router.models_status = 200
        assert (await post(strict, "/v1/chat/completions", chat())).status == 200
        router.models_status = 503
        gone = await post(strict, "/v1/chat/completions", chat())
        for g in (gateway, strict):
            await g.pool.close()
    assert gone.status == 503 and gone.error["code"] == "router_unavailable"
