"""``/v1/files``: JSONL files for batches (upload, list, retrieve, content, delete).

A file belongs to the key that uploaded it (its hash, as stored Responses do): another
key gets 404. Metadata and content are two records in the gateway's state store
(``file`` and ``file_content``); a batch's results are files of purpose ``batch_output``
written by :mod:`.batches_runner`. Uploads are bounded by ``--max-file-bytes``. A file
uploaded with ``expires_after`` (OpenAI's ``{"anchor": "created_at", "seconds": N}``) has
an ``expires_at`` (an upload without one: 30 days, as OpenAI keeps batch input files);
past it the file is gone (dropped when next looked at).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from quart import Quart, Response, request

from .auth import AuthError
from .outcome import Outcome
from .state import GatewayState, StateError
from .validation import ValidationError

T = TypeVar("T")
Answer = Callable[[str, Callable[[Outcome], Awaitable[bytes]]], Awaitable[Response]]
PageArgs = Callable[[Mapping[str, str]], tuple[int, str, str | None]]

UPLOAD_PURPOSES = ("batch",)
FILE, CONTENT = "file", "file_content"
EXPIRES_AFTER_S = (3600, 30 * 24 * 3600)
"""The bounds of ``expires_after.seconds`` (OpenAI's: an hour to 30 days)."""
UPLOAD_KEPT_S = 30 * 24 * 3600
"""How long an upload without ``expires_after`` is kept (OpenAI's default for batch)."""


def expires_after(form: Mapping[str, str]) -> int:
    """The seconds of an upload's ``expires_after`` (multipart ``expires_after[anchor]`` and
    ``expires_after[seconds]``, as the SDKs send it); 400 when bad."""
    anchor, seconds = form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return UPLOAD_KEPT_S
    if anchor != "created_at":
        raise ValidationError(400, "expires_after.anchor must be 'created_at'",
                              "expires_after.anchor", "invalid_request")
    low, high = EXPIRES_AFTER_S
    if seconds is None or not seconds.isdigit() or not low <= int(seconds) <= high:
        raise ValidationError(400, f"expires_after.seconds must be an integer between {low} "
                              f"and {high}", "expires_after.seconds", "invalid_request")
    return int(seconds)


def unavailable() -> AuthError:
    return AuthError(503, "the gateway cannot reach its state store; retry shortly",
                     "state_unavailable", "server_error", retry_after=1)


async def stored(call: Awaitable[T]) -> T:
    """A state-store call; 503 (OpenAI-shaped) when the store cannot be reached."""
    try:
        return await call
    except StateError:
        raise unavailable() from None


def page(items: list[dict[str, Any]], limit: int, order: str, after: str | None
         ) -> dict[str, Any]:
    """A cursor page of ``items`` (given newest first) as OpenAI's list endpoints send it."""
    if order == "asc":
        items = items[::-1]
    if after is not None:
        ids = [i["id"] for i in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    shown = items[:limit]
    return {"object": "list", "data": shown,
            "first_id": shown[0]["id"] if shown else None,
            "last_id": shown[-1]["id"] if shown else None,
            "has_more": len(items) > limit}


class Files:
    """The files of the state store, each bound to its owner."""

    def __init__(self, state: GatewayState):
        self.state = state

    async def create(self, owner: str, filename: str, purpose: str, content: bytes,
                     expires_after_s: int | None = None) -> dict[str, Any]:
        now = time.time()
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        expires_at = None if expires_after_s is None else int(now) + expires_after_s
        meta = {"id": file_id, "object": "file", "bytes": len(content),
                "created_at": int(now), "expires_at": expires_at, "filename": filename,
                "purpose": purpose, "status": "processed", "status_details": None}
        # content first: a file listed is a file that can be read
        await self.state.put_record(CONTENT, file_id, owner, content, now)
        await self.state.put_record(FILE, file_id, owner, json.dumps(meta).encode(), now)
        return meta

    async def meta(self, owner: str, file_id: str) -> dict[str, Any] | None:
        entry = await self.state.get_record(FILE, file_id)
        if entry is None or entry[0] != owner:
            return None
        data: dict[str, Any] = json.loads(entry[1])
        if await self.expired(data):
            return None
        return data

    async def content(self, owner: str, file_id: str) -> bytes | None:
        if await self.meta(owner, file_id) is None:  # (an expired file has no content)
            return None
        entry = await self.state.get_record(CONTENT, file_id)
        if entry is None or entry[0] != owner:
            return None
        return entry[1]

    async def listing(self, owner: str) -> list[dict[str, Any]]:
        items = [json.loads(d) for d in await self.state.list_records(FILE, owner)]
        return [i for i in items if not await self.expired(i)]

    async def expired(self, meta: dict[str, Any]) -> bool:
        """Is the file past its ``expires_at``? If so it is deleted now."""
        expires_at = meta.get("expires_at")
        if expires_at is None or expires_at > time.time():
            return False
        await self.state.delete_record(FILE, meta["id"])
        await self.state.delete_record(CONTENT, meta["id"])
        return True

    async def delete(self, owner: str, file_id: str) -> bool:
        if await self.meta(owner, file_id) is None:
            return False
        await self.state.delete_record(FILE, file_id)
        await self.state.delete_record(CONTENT, file_id)
        return True


def not_found(file_id: str) -> ValidationError:
    return ValidationError(404, f"No such File object: {file_id}", "id", "file_not_found")


def add_routes(app: Quart, files: Files, answer: Answer, page_args: PageArgs,
               max_file_bytes: int) -> None:
    @app.post("/v1/files")
    async def file_upload() -> Response:
        async def build(outcome: Outcome) -> bytes:
            form, uploads = await request.form, await request.files
            purpose = form.get("purpose")
            if purpose not in UPLOAD_PURPOSES:
                raise ValidationError(400, f"purpose must be one of {list(UPLOAD_PURPOSES)}",
                                      "purpose", "invalid_request")
            upload = uploads.get("file")
            if upload is None:
                raise ValidationError(400, "a multipart 'file' field is required", "file",
                                      "missing_required_parameter")
            content = upload.read(max_file_bytes + 1)
            if len(content) > max_file_bytes:
                raise ValidationError(413, f"the file exceeds {max_file_bytes} bytes", "file",
                                      "file_too_large")
            filename = upload.filename or "upload.jsonl"
            if not filename.endswith(".jsonl"):
                raise ValidationError(400, "a batch input file must be JSONL (.jsonl)", "file",
                                      "invalid_file_format")
            meta = await stored(files.create(outcome.owner, filename, purpose, content,
                                             expires_after(form)))
            return json.dumps(meta).encode()
        return await answer("/v1/files", build)

    @app.get("/v1/files")
    async def file_list() -> Response:
        async def build(outcome: Outcome) -> bytes:
            raw_limit = request.args.get("limit", "10000")
            limit = int(raw_limit) if raw_limit.isdigit() else 0
            if not 1 <= limit <= 10_000:
                raise ValidationError(400, "limit must be an integer between 1 and 10000",
                                      "limit", "invalid_request")
            _, order, after = page_args({k: v for k, v in request.args.items()
                                         if k != "limit"})
            items = await stored(files.listing(outcome.owner))
            purpose = request.args.get("purpose")
            if purpose:
                items = [i for i in items if i["purpose"] == purpose]
            return json.dumps(page(items, limit, order, after)).encode()
        return await answer("/v1/files", build)

    @app.get("/v1/files/<file_id>")
    async def file_retrieve(file_id: str) -> Response:
        async def build(outcome: Outcome) -> bytes:
            meta = await stored(files.meta(outcome.owner, file_id))
            if meta is None:
                raise not_found(file_id)
            return json.dumps(meta).encode()
        return await answer("/v1/files/{id}", build)

    @app.get("/v1/files/<file_id>/content")
    async def file_content(file_id: str) -> Response:
        async def build(outcome: Outcome) -> bytes:
            data = await stored(files.content(outcome.owner, file_id))
            if data is None:
                raise not_found(file_id)
            return data
        resp = await answer("/v1/files/{id}/content", build)
        if resp.status_code == 200:
            resp.content_type = "application/jsonl"
        return resp

    @app.delete("/v1/files/<file_id>")
    async def file_delete(file_id: str) -> Response:
        async def build(outcome: Outcome) -> bytes:
            if not await stored(files.delete(outcome.owner, file_id)):
                raise not_found(file_id)
            return json.dumps({"id": file_id, "object": "file", "deleted": True}).encode()
        return await answer("/v1/files/{id}", build)
