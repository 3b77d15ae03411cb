"""The Conversations API (``/v1/conversations``, its items, ``conversation`` on Responses).

A conversation is kept in the state store like a stored response (:mod:`.state`): its
object as the entry's body and its items as the entry's items, bound to the key that
created it (another key gets 404), under the same per-entry cap and TTL (each write renews
it), so any gateway sharing the store serves it. A response created with
``conversation`` gets the conversation's items before its own input, and its input and
output are appended once it completed. Appends read, then write the whole conversation:
two turns of one conversation at the same moment may lose one's items (a client holds one
turn of a conversation at a time).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from quart import Quart, Response, request

from . import responses_translate as translate
from .auth import AuthError
from .outcome import Outcome
from .state import GatewayState, StateError
from .state.base import encode_items
from .validation import ValidationError

MAX_ADDED_ITEMS = 20
"""Items one create or add call may carry (OpenAI's limit)."""
MAX_METADATA = 16
_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}

Answer = Callable[[str, Callable[[Outcome], Awaitable[bytes]]], Awaitable[Response]]


def conversation_id(body: Mapping[str, Any]) -> str | None:
    """The ``conversation`` a Responses request names (an id or ``{"id": ...}``)."""
    value = body.get("conversation")
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def is_conversation_id(value: object) -> bool:
    """Conversations share the responses' store: their ids never name a response."""
    return isinstance(value, str) and value.startswith("conv_")


def with_ids(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items as a conversation keeps them: what reaches an engine, each with its own id."""
    kept = translate.kept_items(items)
    return [{**item, "id": item.get("id") or f"{_PREFIX[item['type']]}_{uuid.uuid4().hex}"}
            for item in kept]


def not_found(conv_id: str) -> ValidationError:
    return ValidationError(404, f"Conversation with id '{conv_id}' not found.", None,
                           "conversation_not_found")


def unavailable() -> AuthError:
    return AuthError(503, "the gateway cannot reach its state store; retry shortly",
                     "state_unavailable", "server_error", retry_after=1)


class Conversations:
    """Conversations of the keys, on the gateway's state store."""

    def __init__(self, state: GatewayState):
        self.state = state

    async def load(self, conv_id: str, owner: str) -> tuple[dict[str, Any],
                                                            list[dict[str, Any]]]:
        if not self.state.enabled:
            raise ValidationError(400, "conversations are not supported: this gateway stores "
                                  "nothing (--store-responses 0)", "conversation",
                                  "unsupported_parameter")
        try:
            entry = await self.state.get_response(conv_id, owner, time.time())
        except StateError:
            raise unavailable() from None
        if entry is None or not conv_id.startswith("conv_"):
            raise not_found(conv_id)
        conversation: dict[str, Any] = json.loads(entry.response)
        return conversation, entry.input_items()

    async def save(self, owner: str, conversation: dict[str, Any],
                   items: list[dict[str, Any]]) -> None:
        data = json.dumps(conversation).encode()
        try:
            kept = await self.state.put_response(conversation["id"], owner, data,
                                                 encode_items(items), time.time())
        except StateError:
            raise unavailable() from None
        if not kept:
            raise ValidationError(400, "the conversation would exceed --response-entry-bytes",
                                  "items", "conversation_too_large")

    async def append_turn(self, conv_id: str, owner: str, given: list[dict[str, Any]],
                          response: dict[str, Any]) -> None:
        """After a response of the conversation: its input and output become items."""
        conversation, items = await self.load(conv_id, owner)
        output = [item for item in response.get("output") or [] if isinstance(item, dict)]
        await self.save(owner, conversation,
                        [*items, *with_ids(given), *with_ids(translate.output_as_input(output))])


def _items_arg(body: Any, required: bool) -> list[dict[str, Any]]:
    items = body.get("items") if isinstance(body, dict) else None
    if items is None and not required:
        return []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ValidationError(400, "items must be an array of items", "items",
                              "invalid_request")
    if len(items) > MAX_ADDED_ITEMS:
        raise ValidationError(400, f"at most {MAX_ADDED_ITEMS} items may be added at once",
                              "items", "invalid_request")
    return with_ids([dict(i) for i in items])


def _metadata_arg(body: Any) -> dict[str, str] | None:
    metadata = body.get("metadata") if isinstance(body, dict) else None
    if metadata is None:
        return None
    if (not isinstance(metadata, dict) or len(metadata) > MAX_METADATA
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise ValidationError(400, f"metadata must be an object of at most {MAX_METADATA} "
                              "string values", "metadata", "invalid_request")
    return metadata


def add_routes(app: Quart, conversations: Conversations, answer: Answer,
               page_args: Callable[[Mapping[str, str]], tuple[int, str, str | None]]) -> None:
    """The Conversations endpoints on the gateway's Quart app (``answer``: key, refusals)."""

    async def body() -> Any:
        return await request.get_json(force=True, silent=True) or {}

    @app.post("/v1/conversations")
    async def create() -> Response:
        data = await body()

        async def build(outcome: Outcome) -> bytes:
            conversation = {"id": f"conv_{uuid.uuid4().hex}", "object": "conversation",
                            "created_at": int(time.time()),
                            "metadata": _metadata_arg(data) or {}}
            await conversations.save(outcome.owner, conversation, _items_arg(data, False))
            return json.dumps(conversation).encode()
        return await answer("/v1/conversations", build)

    @app.get("/v1/conversations/<conv_id>")
    async def retrieve(conv_id: str) -> Response:
        async def build(outcome: Outcome) -> bytes:
            conversation, _ = await conversations.load(conv_id, outcome.owner)
            return json.dumps(conversation).encode()
        return await answer("/v1/conversations/{id}", build)

    @app.post("/v1/conversations/<conv_id>")
    async def update(conv_id: str) -> Response:
        data = await body()

        async def build(outcome: Outcome) -> bytes:
            conversation, items = await conversations.load(conv_id, outcome.owner)
            metadata = _metadata_arg(data)
            if metadata is None:
                raise ValidationError(400, "metadata is required", "metadata",
                                      "invalid_request")
            conversation["metadata"] = metadata
            await conversations.save(outcome.owner, conversation, items)
            return json.dumps(conversation).encode()
        return await answer("/v1/conversations/{id}", build)

    @app.delete("/v1/conversations/<conv_id>")
    async def delete(conv_id: str) -> Response:
        async def build(outcome: Outcome) -> bytes:
            await conversations.load(conv_id, outcome.owner)
            try:
                await conversations.state.delete_response(conv_id, outcome.owner)
            except StateError:
                raise unavailable() from None
            return json.dumps({"id": conv_id, "object": "conversation.deleted",
                               "deleted": True}).encode()
        return await answer("/v1/conversations/{id}", build)

    @app.post("/v1/conversations/<conv_id>/items")
    async def add_items(conv_id: str) -> Response:
        data = await body()

        async def build(outcome: Outcome) -> bytes:
            conversation, items = await conversations.load(conv_id, outcome.owner)
            added = _items_arg(data, True)
            await conversations.save(outcome.owner, conversation, [*items, *added])
            page = translate.items_page(conv_id, added, limit=len(added) or 1, order="asc",
                                        after=None)
            return json.dumps(page).encode()
        return await answer("/v1/conversations/{id}/items", build)

    @app.get("/v1/conversations/<conv_id>/items")
    async def list_items(conv_id: str) -> Response:
        async def build(outcome: Outcome) -> bytes:
            limit, order, after = page_args(request.args)
            _, items = await conversations.load(conv_id, outcome.owner)
            page = translate.items_page(conv_id, items, limit=limit, order=order, after=after)
            return json.dumps(page).encode()
        return await answer("/v1/conversations/{id}/items", build)

    @app.get("/v1/conversations/<conv_id>/items/<item_id>")
    async def retrieve_item(conv_id: str, item_id: str) -> Response:
        async def build(outcome: Outcome) -> bytes:
            _, items = await conversations.load(conv_id, outcome.owner)
            for item in items:
                if item.get("id") == item_id:
                    return json.dumps(translate.listed_item(item, item_id)).encode()
            raise ValidationError(404, f"Item with id '{item_id}' not found.", None,
                                  "item_not_found")
        return await answer("/v1/conversations/{id}/items/{item}", build)

    @app.delete("/v1/conversations/<conv_id>/items/<item_id>")
    async def delete_item(conv_id: str, item_id: str) -> Response:
        async def build(outcome: Outcome) -> bytes:
            conversation, items = await conversations.load(conv_id, outcome.owner)
            left = [item for item in items if item.get("id") != item_id]
            if len(left) == len(items):
                raise ValidationError(404, f"Item with id '{item_id}' not found.", None,
                                      "item_not_found")
            await conversations.save(outcome.owner, conversation, left)
            return json.dumps(conversation).encode()
        return await answer("/v1/conversations/{id}/items/{item}", build)
