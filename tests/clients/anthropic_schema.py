"""Anthropic's published Messages shapes, checked strictly: every stream event, every Message.

Source of the shapes: the typed models of the official ``anthropic`` Python SDK, pinned in
requirements/dev.lock (``anthropic.types.RawMessageStreamEvent``, ``anthropic.types.Message``).
They are generated from Anthropic's OpenAPI description of the Messages API, the one behind
its reference pages (https://docs.anthropic.com/en/api/messages and
https://docs.anthropic.com/en/api/messages-streaming for the event flow). The SDK itself
builds its objects without validating them, so here each value is validated strictly
(pydantic strict mode: no coercion) and must carry no member the models do not define.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from pydantic import BaseModel, TypeAdapter

_EVENT = TypeAdapter(RawMessageStreamEvent)


def _no_extra(value: Any, where: str) -> None:
    """No member anywhere in ``value`` that its model does not declare."""
    if isinstance(value, BaseModel):
        extra = value.model_extra or {}
        assert not extra, f"{where}: members not in Anthropic's shape: {sorted(extra)}"
        for name in type(value).model_fields:
            _no_extra(getattr(value, name), f"{where}.{name}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _no_extra(item, f"{where}[{i}]")


def check_event(event: dict[str, Any]) -> None:
    """``event`` is one of Anthropic's stream events (or its error event), exactly."""
    if event.get("type") == "error":  # (not in the union: the SDK raises on it)
        check_error(event)
        return
    parsed = _EVENT.validate_python(event, strict=True)
    _no_extra(parsed, event.get("type", "event"))
    if event["type"] == "message_start":
        check_message(event["message"])


def check_message(message: dict[str, Any]) -> None:
    """``message`` is Anthropic's Message object, exactly."""
    parsed = Message.model_validate(message, strict=True)
    _no_extra(parsed, "message")


def check_error(body: dict[str, Any]) -> None:
    """``body`` is Anthropic's error object, exactly."""
    _no_extra(ErrorResponse.model_validate(body, strict=True), "error")


def parse_sse(data: bytes) -> list[dict[str, Any]]:
    """A Messages SSE body as its events; each frame's ``event:`` names its data's type."""
    events = []
    for frame in data.decode().split("\n\n"):
        if not frame.strip():
            continue
        fields: dict[str, str] = {}
        for line in frame.split("\n"):
            name, _, value = line.partition(": ")
            fields[name] = value
        event = json.loads(fields["data"])
        assert fields.get("event") == event["type"], frame
        events.append(event)
    return events


def events_accumulate(events: list[dict[str, Any]]) -> Message:
    """The Message the SDK's stream helper builds from ``events``."""
    snapshot: Any = None
    buffers: dict[int, bytes] = {}
    for event in events:
        snapshot = accumulate_event(event=_EVENT.validate_python(event),
                                    current_snapshot=snapshot, json_bufs=buffers)
    assert isinstance(snapshot, Message)
    return snapshot


class _Checked(httpx2.SyncByteStream):
    """A response body passed on as it comes, and checked once it has all come."""

    def __init__(self, inner: httpx2.SyncByteStream, check: Any) -> None:
        self.inner = inner
        self.check = check

    def __iter__(self) -> Iterator[bytes]:
        body = bytearray()
        for chunk in self.inner:
            body.extend(chunk)
            yield chunk
        self.check(bytes(body))

    def close(self) -> None:
        self.inner.close()


class CheckingTransport(httpx2.HTTPTransport):
    """The SDK's transport, checking everything ``/v1/messages`` answers it: each stream's
    events, each Message, each error (what the SDK was sent, not what it made of it)."""

    def __init__(self) -> None:
        super().__init__()
        self.checked = {"streams": 0, "events": 0, "messages": 0, "errors": 0}

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = super().handle_request(request)
        if request.url.path != "/v1/messages":
            return response
        streamed = response.headers.get("content-type", "").startswith("text/event-stream")
        status = response.status_code

        def check(body: bytes) -> None:
            if streamed:
                events = parse_sse(body)
                for event in events:
                    check_event(event)
                self.checked["streams"] += 1
                self.checked["events"] += len(events)
            elif status == 200:
                check_message(json.loads(body))
                self.checked["messages"] += 1
            else:
                check_error(json.loads(body))
                self.checked["errors"] += 1

        assert isinstance(response.stream, httpx2.SyncByteStream)
        response.stream = _Checked(response.stream, check)
        return response
