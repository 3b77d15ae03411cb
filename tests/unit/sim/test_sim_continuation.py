"""The sim continues a partial answer as a deterministic model would (issue 13)."""

from __future__ import annotations

import pytest

from nebula_node.sim.continuation import resume_point, split_walk
from nebula_node.sim.protocol import BadRequest, chat_prompt
from nebula_node.sim.tokens import generate_tokens
from tests.unit.sim.test_sim_app import client

USER = [{"role": "user", "content": "hello sim"}]


def test_split_walk_finds_the_prompt_and_the_tokens_already_generated() -> None:
    prompt = "Once upon a time"
    walk = generate_tokens(prompt, 9)
    for k in range(10):
        assert split_walk(prompt + "".join(walk[:k])) == (prompt, k)
    assert split_walk("no vocabulary words at the endx") == ("no vocabulary words at the endx", 0)
    before = "user: x\n"
    text = "".join(generate_tokens(before, 3))
    assert split_walk(before + text, len(before)) == (before, 3)


def test_resume_point_for_chat_needs_vllms_flags() -> None:
    answer = "".join(generate_tokens(chat_prompt({"messages": USER}), 2))
    body = {"messages": [*USER, {"role": "assistant", "content": answer}],
            "continue_final_message": True, "add_generation_prompt": False}
    context, origin, done = resume_point("/v1/chat/completions", body, "")
    assert (origin, done) == (chat_prompt({"messages": USER}), 2)
    assert context == origin + answer
    with pytest.raises(BadRequest, match="add_generation_prompt"):
        resume_point("/v1/chat/completions", {**body, "add_generation_prompt": True}, "")
    with pytest.raises(BadRequest, match="assistant"):
        resume_point("/v1/chat/completions", {**body, "messages": USER}, "")
    plain = chat_prompt({"messages": USER})
    assert resume_point("/v1/chat/completions", {"messages": USER}, plain) == (plain, plain, 0)


async def resumed_texts(path: str, body: dict[str, object], cut: int
                        ) -> tuple[dict[str, object], dict[str, object]]:
    c, _ = client()
    whole = await (await c.post(path, json=body)).get_json()
    if path == "/v1/completions":
        text = whole["choices"][0]["text"]
    else:
        text = whole["choices"][0]["message"]["content"]
    pieces = [" " + w for w in text.split(" ")[1:]]
    partial = "".join(pieces[:cut])
    limits = {k: v - cut for k, v in body.items() if k == "max_tokens" and isinstance(v, int)}
    if path == "/v1/completions":
        cont = {**body, **limits, "prompt": str(body["prompt"]) + partial}
    else:
        cont = {**body, **limits, "messages": [*USER, {"role": "assistant", "content": partial}],
                "continue_final_message": True, "add_generation_prompt": False}
    rest = await (await c.post(path, json=cont)).get_json()
    return whole, rest


@pytest.mark.parametrize("limit", [None, 5])
@pytest.mark.parametrize("cut", [1, 3])
async def test_chat_continuation_is_the_rest_of_the_uninterrupted_answer(
        limit: int | None, cut: int) -> None:
    body: dict[str, object] = {"model": "m", "messages": USER}
    if limit:
        body["max_tokens"] = limit
    whole, rest = await resumed_texts("/v1/chat/completions", body, cut)
    w, r = whole["choices"][0], rest["choices"][0]  # type: ignore[index]
    text = w["message"]["content"]
    assert text.endswith(r["message"]["content"])
    assert len(text) > len(r["message"]["content"])
    assert w["finish_reason"] == r["finish_reason"] == ("length" if limit else "stop")
    wu, ru = whole["usage"], rest["usage"]  # type: ignore[index]
    assert ru["prompt_tokens"] == wu["prompt_tokens"] + cut
    assert ru["completion_tokens"] == wu["completion_tokens"] - cut


async def test_completions_continuation_is_the_rest_of_the_uninterrupted_answer() -> None:
    body = {"model": "m", "prompt": "Tell me a story", "max_tokens": 6}
    whole, rest = await resumed_texts("/v1/completions", body, 2)
    text = whole["choices"][0]["text"]  # type: ignore[index]
    pieces = [" " + p for p in text.split(" ")[1:]]
    assert rest["choices"][0]["text"] == "".join(pieces[2:])  # type: ignore[index]
    assert rest["usage"]["completion_tokens"] == 4  # type: ignore[index]
