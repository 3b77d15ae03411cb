"""Client-supplied media URLs: data: always, http(s) only to allowed hosts, nothing else."""

from __future__ import annotations

from typing import Any

import pytest

from nebula_gateway.config import GatewayConfig
from nebula_gateway.gateway import Gateway
from nebula_gateway.media import MediaPolicy, media_urls
from tests.unit.gateway.asgi import NO_ROUTER, post

DATA = "data:image/png;base64,iVBORw0KGgo="
METADATA = "http://169.254.169.254/latest/meta-data/"


def chat_image(url: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": url}}]}]}


def responses_image(url: Any) -> dict[str, Any]:
    return {"model": "m", "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": url}]}]}


def test_default_allows_data_urls_only() -> None:
    policy = MediaPolicy()
    assert policy.refusal(DATA) is None
    assert policy.refusal("DATA:image/png;base64,AA") is None
    for url in (METADATA, "https://example.com/cat.png", "file:///etc/passwd",
                "ftp://x/y", "cat.png", "//example.com/x.png"):
        assert policy.refusal(url) is not None, url


def test_allowed_hosts_schemes_and_subdomains() -> None:
    policy = MediaPolicy.parse("images.example.com, http://cdn.local, *.media.example.org")
    assert policy.refusal("https://images.example.com/a.png") is None
    assert policy.refusal("http://images.example.com/a.png") is not None  # https only
    assert policy.refusal("http://cdn.local/a.png") is None
    assert policy.refusal("https://a.b.media.example.org/x") is None
    assert policy.refusal("https://media.example.org/x") is not None
    assert policy.refusal("https://images.example.com.evil.net/a.png") is not None
    assert policy.refusal("https://user:pw@images.example.com/a.png") is not None
    assert policy.refusal(METADATA) is not None
    with pytest.raises(ValueError):
        MediaPolicy.parse("gopher://x")
    with pytest.raises(ValueError):
        MediaPolicy.parse("https://x/path")


def test_every_media_url_is_found_with_its_param() -> None:
    body = {"input": [
        {"role": "user", "content": [{"type": "input_text", "text": "x"},
                                     {"type": "input_image", "image_url": "a"},
                                     {"type": "input_file", "file_url": "b"}]},
        {"type": "function_call_output", "call_id": "c",
         "output": [{"type": "input_image", "image_url": "c"}]}]}
    assert list(media_urls("/v1/responses", body)) == [
        ("input[0].content[1].image_url", "a"), ("input[0].content[2].file_url", "b"),
        ("input[1].output[0].image_url", "c")]
    chat = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "u"}},
        {"type": "video_url", "video_url": {"url": "v"}}]}]}
    assert list(media_urls("/v1/chat/completions", chat)) == [
        ("messages[0].content[0].image_url.url", "u"),
        ("messages[0].content[1].video_url.url", "v")]


@pytest.mark.parametrize(("path", "build", "param"), [
    ("/v1/chat/completions", chat_image, "messages[0].content[1].image_url.url"),
    ("/v1/responses", responses_image, "input[0].content[0].image_url"),
], ids=["chat", "responses"])
async def test_the_gateway_refuses_a_remote_image_naming_the_param(path: str, build: Any,
                                                                   param: str) -> None:
    gateway = Gateway(GatewayConfig([NO_ROUTER]))
    answer = await post(gateway, path, build(METADATA))
    assert answer.status == 400 and answer.error["param"] == param
    assert answer.error["code"] == "media_url_not_allowed"
    # a data: URL passes the check (and then finds no router here)
    assert (await post(gateway, path, build(DATA))).status == 503
    allowed = Gateway(GatewayConfig([NO_ROUTER],
                                    media=MediaPolicy.parse("images.example.com")))
    assert (await post(allowed, path, build("https://images.example.com/a.png"))).status == 503
    await gateway.pool.close()
    await allowed.pool.close()
