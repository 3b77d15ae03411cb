"""``/tokenize`` and ``/detokenize`` through the gateway: vLLM's shapes, passed through to
engines that have them, a 400 for the others."""

from __future__ import annotations

from typing import Any

from tests.clients.conftest import KEY, MODEL, NO_TOKENIZE
from tests.e2e.test_gateway import post

AUTH = {"authorization": f"Bearer {KEY}"}


def test_tokenize_and_detokenize(nebula: dict[str, Any]) -> None:
    gateway = nebula["gateway"]
    got = post(f"{gateway}/tokenize", json_body={"model": MODEL, "prompt": "twelve chars"},
               headers=AUTH)
    assert got.status_code == 200, got.text
    counted = got.json()
    assert counted["count"] == 3 and len(counted["tokens"]) == 3
    back = post(f"{gateway}/detokenize", json_body={"model": MODEL,
                                                    "tokens": counted["tokens"]},
                headers=AUTH)
    assert back.status_code == 200 and back.json()["prompt"] == "twelve chars"
    chat = post(f"{gateway}/tokenize", headers=AUTH, json_body={
        "model": MODEL, "messages": [{"role": "user", "content": "Hi"}]})
    assert chat.status_code == 200 and chat.json()["count"] > 0


def test_an_engine_without_them_is_a_400(nebula: dict[str, Any]) -> None:
    got = post(f"{nebula['gateway']}/tokenize", headers=AUTH,
               json_body={"model": NO_TOKENIZE, "prompt": "x"})
    assert got.status_code == 400
    assert got.json()["error"]["code"] == "model_not_supported"
    bad = post(f"{nebula['gateway']}/detokenize", headers=AUTH,
               json_body={"model": MODEL, "tokens": ["x"]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens[0]"
    unauthenticated = post(f"{nebula['gateway']}/tokenize",
                           json_body={"model": MODEL, "prompt": "x"})
    assert unauthenticated.status_code == 401
