"""``/v1/batches``: create, retrieve, list and cancel batches (OpenAI's Batch API).

A batch belongs to the key that created it (another key gets 404), is a record in the
state store, and is run by some gateway's :class:`~.batches_runner.BatchRunner`; what the
API shows is that record with the live line counts and a cancel asked but not yet
finished (:func:`~.batches_lines.present`).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from quart import Quart, Response, request

from . import batches_lines as bl
from .batches_runner import ACTIVE, BATCH, CANCEL, BatchRunner
from .files import Answer, Files, PageArgs, page, stored
from .outcome import Outcome
from .validation import ValidationError

MAX_METADATA = 16


def invalid(message: str, param: str | None, code: str = "invalid_request"
            ) -> ValidationError:
    return ValidationError(400, message, param, code)


def parse_create(raw: bytes) -> tuple[str, str, str, dict[str, str] | None]:
    """(input_file_id, endpoint, completion_window, metadata) of a create body, or 400."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise invalid("the body is not valid JSON", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object", None)
    file_id, endpoint = body.get("input_file_id"), body.get("endpoint")
    window, metadata = body.get("completion_window"), body.get("metadata")
    if not isinstance(file_id, str) or not file_id:
        raise invalid("input_file_id is required", "input_file_id",
                      "missing_required_parameter")
    if endpoint not in bl.ENDPOINTS:
        raise invalid(f"endpoint must be one of {list(bl.ENDPOINTS)}", "endpoint")
    if window not in bl.COMPLETION_WINDOWS:
        raise invalid(f"completion_window must be one of {list(bl.COMPLETION_WINDOWS)}",
                      "completion_window")
    if metadata is not None and not (
            isinstance(metadata, dict) and len(metadata) <= MAX_METADATA
            and all(isinstance(k, str) and len(k) <= 64 and isinstance(v, str)
                    and len(v) <= 512 for k, v in metadata.items())):
        raise invalid(f"metadata must be at most {MAX_METADATA} string pairs (keys up to 64 "
                      "characters, values up to 512)", "metadata")
    return file_id, str(endpoint), str(window), metadata


def not_found(batch_id: str) -> ValidationError:
    return ValidationError(404, f"No batch found with id '{batch_id}'.", "batch_id",
                           "batch_not_found")


def add_routes(app: Quart, files: Files, runner: BatchRunner, answer: Answer,
               page_args: PageArgs) -> None:
    state = runner.state

    async def load(owner: str, batch_id: str) -> dict[str, Any]:
        entry = await stored(state.get_record(BATCH, batch_id))
        if entry is None or entry[0] != owner:
            raise not_found(batch_id)
        batch: dict[str, Any] = json.loads(entry[1])
        return batch

    async def shown(batch: dict[str, Any]) -> dict[str, Any]:
        counts = None
        if batch["status"] in (bl.IN_PROGRESS, bl.FINALIZING):
            counts = await stored(state.line_counts(batch["id"]))
        cancel = None
        if batch["status"] not in bl.TERMINAL:
            asked = await stored(state.get_record(CANCEL, batch["id"]))
            cancel = json.loads(asked[1])["cancelling_at"] if asked else None
        return bl.present(batch, counts, cancel)

    @app.post("/v1/batches")
    async def batch_create() -> Response:
        async def build(outcome: Outcome) -> bytes:
            raw = await request.get_data()
            file_id, endpoint, window, metadata = parse_create(
                raw if isinstance(raw, bytes) else raw.encode())
            meta = await stored(files.meta(outcome.owner, file_id))
            if meta is None:
                raise ValidationError(404, f"No such File object: {file_id}",
                                      "input_file_id", "file_not_found")
            if meta["purpose"] != "batch":
                raise invalid("the input file's purpose must be 'batch'", "input_file_id")
            now = time.time()
            batch = bl.new_batch(f"batch_{uuid.uuid4().hex}", endpoint, file_id, window,
                                 metadata, int(now), runner.window_s)
            await stored(state.put_record(BATCH, batch["id"], outcome.owner,
                                          json.dumps(batch).encode(), now))
            await stored(state.put_record(ACTIVE, batch["id"], outcome.owner,
                                          json.dumps({"id": batch["id"]}).encode(), now))
            runner.wake.set()
            return json.dumps(batch).encode()
        return await answer("/v1/batches", build)

    @app.get("/v1/batches/<batch_id>")
    async def batch_retrieve(batch_id: str) -> Response:
        async def build(outcome: Outcome) -> bytes:
            return json.dumps(await shown(await load(outcome.owner, batch_id))).encode()
        return await answer("/v1/batches/{id}", build)

    @app.post("/v1/batches/<batch_id>/cancel")
    async def batch_cancel(batch_id: str) -> Response:
        async def build(outcome: Outcome) -> bytes:
            batch = await load(outcome.owner, batch_id)
            if batch["status"] in bl.TERMINAL:
                raise ValidationError(409, f"Cannot cancel a batch with status "
                                      f"'{batch['status']}'.", None, "batch_not_cancellable")
            if not await stored(state.get_record(CANCEL, batch_id)):
                asked = json.dumps({"cancelling_at": int(time.time())}).encode()
                await stored(state.put_record(CANCEL, batch_id, outcome.owner, asked,
                                              time.time()))
            runner.cancel(batch_id)  # here at once; another gateway sees it within 0.5 s
            return json.dumps(await shown(batch)).encode()
        return await answer("/v1/batches/{id}/cancel", build)

    @app.get("/v1/batches")
    async def batch_list() -> Response:
        async def build(outcome: Outcome) -> bytes:
            limit, _, after = page_args(request.args)
            items = [json.loads(d) for d in
                     await stored(state.list_records(BATCH, outcome.owner))]
            listed = page(items, limit, "desc", after)
            listed["data"] = [await shown(b) for b in listed["data"]]
            return json.dumps(listed).encode()
        return await answer("/v1/batches", build)
