"""An httpx2 transport that checks what Nebula's OpenAI paths answer a client, on its way in.

For clients that build their own ``openai`` client (the Agents SDK, pydantic-ai, LangChain's
``ChatOpenAI``): every answer of ``/v1/responses`` and ``/v1/chat/completions``, streamed or
not, is validated against OpenAI's published description (tests/schemas/openai-openapi.yaml,
:mod:`tests.support.openai_schema`): each Responses stream event by its own schema and the
``ResponseStreamEvent`` union, each chat chunk, each whole Response or completion. What the
client was sent, not what it made of it: a client that tolerates a malformed answer still
fails the test. ``checked`` counts what was seen, so a test can show the check ran.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx2

from tests.support.openai_schema import checker

WHOLE = {"/v1/responses": "Response", "/v1/chat/completions": "CreateChatCompletionResponse",
         "/v1/embeddings": "CreateEmbeddingResponse"}


def sse_data(body: bytes) -> list[dict[str, Any]]:
    """The JSON ``data:`` of each SSE frame (``[DONE]`` left out); an ``event:`` line, where
    there is one, must name its data's type."""
    out = []
    for frame in body.decode().replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in frame.split("\n"):
            name, _, value = line.partition(":")
            if name:
                fields[name] = value.removeprefix(" ")
        if "data" not in fields or fields["data"] == "[DONE]":
            continue
        data = json.loads(fields["data"])
        assert "event" not in fields or fields["event"] == data.get("type"), frame
        out.append(data)
    return out


class Counts:
    """What the checks saw, by kind (``responses.events``, ``chat.chunks``, ...)."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.failures: list[str] = []  # kept too: a client may swallow what a check raised

    def add(self, kind: str, n: int = 1) -> None:
        self.seen[kind] = self.seen.get(kind, 0) + n

    def __getitem__(self, kind: str) -> int:
        return self.seen.get(kind, 0)


def checker_for(path: str, status: int, streamed: bool,
                counts: Counts) -> Callable[[bytes], None] | None:
    """The check of one answer's whole body; None for a path not checked here."""
    if path not in WHOLE:
        return None

    def check(body: bytes) -> None:
        try:
            check_body(body)
        except Exception as exc:
            counts.failures.append(f"{path}: {exc!r}"[:2000])
            raise

    def check_body(body: bytes) -> None:
        if status != 200:
            error = json.loads(body)
            assert isinstance(error.get("error"), dict) and error["error"].get("message"), error
            counts.add("errors")
        elif streamed and path == "/v1/responses":
            events = sse_data(body)
            for event in events:
                checker().check_event(event)
            assert events and events[-1]["type"] in ("response.completed",
                                                     "response.incomplete"), events[-1:]
            checker().check("Response", events[-1]["response"])
            numbers = [e.get("sequence_number") for e in events]
            assert numbers == list(range(len(events))), numbers  # in order, none missing
            counts.add("responses.streams")
            counts.add("responses.events", len(events))
        elif streamed:
            chunks = sse_data(body)
            for chunk in chunks:
                checker().check("CreateChatCompletionStreamResponse", chunk)
            assert body.rstrip().endswith(b"data: [DONE]"), body[-80:]
            counts.add("chat.streams")
            counts.add("chat.chunks", len(chunks))
        else:
            checker().check(WHOLE[path], json.loads(body))
            counts.add(path.rsplit("/", 1)[-1])

    return check


class _Body:
    """A response body as it comes; checked once, when it has all come or is closed.

    The ``openai`` SDK reads a stream up to ``[DONE]`` and then drains the rest by iterating
    the raw stream anew, so what came is kept here rather than in one iteration."""

    def __init__(self, check: Callable[[bytes], None]) -> None:
        self.check, self.body, self.checked = check, bytearray(), False

    def done(self) -> None:
        if not self.checked:
            self.checked = True
            self.check(bytes(self.body))


class _Checked(httpx2.SyncByteStream):
    def __init__(self, inner: httpx2.SyncByteStream, check: Callable[[bytes], None]) -> None:
        self.inner, self.seen = inner, _Body(check)

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.seen.body.extend(chunk)
            yield chunk
        self.seen.done()

    def close(self) -> None:
        self.inner.close()
        self.seen.done()


class _AsyncChecked(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream,
                 check: Callable[[bytes], None]) -> None:
        self.inner, self.seen = inner, _Body(check)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            self.seen.body.extend(chunk)
            yield chunk
        self.seen.done()

    async def aclose(self) -> None:
        await self.inner.aclose()
        self.seen.done()


def _check_of(request: httpx2.Request, response: httpx2.Response,
              counts: Counts) -> Callable[[bytes], None] | None:
    streamed = response.headers.get("content-type", "").startswith("text/event-stream")
    return checker_for(request.url.path, response.status_code, streamed, counts)


class CheckingTransport(httpx2.HTTPTransport):
    """The sync client's transport, checking every answer of the paths in :data:`WHOLE`."""

    def __init__(self) -> None:
        super().__init__()
        self.checked = Counts()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = super().handle_request(request)
        check = _check_of(request, response, self.checked)
        if check is not None:
            assert isinstance(response.stream, httpx2.SyncByteStream)
            response.stream = _Checked(response.stream, check)
        return response


class AsyncCheckingTransport(httpx2.AsyncHTTPTransport):
    """The async client's transport, checking as :class:`CheckingTransport` does."""

    def __init__(self) -> None:
        super().__init__()
        self.checked = Counts()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await super().handle_async_request(request)
        check = _check_of(request, response, self.checked)
        if check is not None:
            assert isinstance(response.stream, httpx2.AsyncByteStream)
            response.stream = _AsyncChecked(response.stream, check)
        return response
