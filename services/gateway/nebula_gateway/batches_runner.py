"""Runs batches: each gateway's supervised executor (one task per batch it holds).

Every second (and at once when a batch is created here) the executor looks for batches
not finished (``batch_active`` records) and claims each free one with an expiring lease in
the state store, renewed while it runs: two gateways on one store never run one batch at
once, and a batch whose gateway died is taken over when its lease expires. A batch's
lines go through the gateway's own hot-path handlers (the key's model allow-list and
token budget apply as to any request; rate and concurrency do not: a batch has its own
bound, ``--batch-concurrency``) at the lowest priority class (``x-nebula-priority:
batch``). Each finished line's result is written to the store as it completes, so a
restarted gateway resumes a batch without repeating finished lines. A cancel (asked here,
or seen in the store within half a second) stops new lines at once; lines in flight end.
At ``expires_at`` no new line starts and the lines in flight are abandoned: the batch
ends ``expired``, each unfinished line a ``batch_expired`` line of its error file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from nebula_common.tasks import TaskSet, cancel_task

from . import batches_lines as bl
from .auth import ANONYMOUS, ApiKey, AuthError
from .files import Files
from .outcome import Outcome
from .reply import REFUSALS, Reply, refusal
from .state import StateError

if TYPE_CHECKING:
    from .gateway import Gateway

log = logging.getLogger("nebula.gateway.batches")

BATCH, ACTIVE, CANCEL = "batch", "batch_active", "batch_cancel"
LEASE_S = 15.0
"""How long a batch's claim lasts unless renewed (a dead gateway's batches wait this)."""
SCAN_S = 1.0
WATCH_S = 0.5
"""How often a running batch looks for a cancel asked on another gateway."""
RETRIES = 5
"""Tries of a line refused for a moment (429, 503) before its refusal is its result."""
PRIORITY = "batch"


def lease_name(batch_id: str) -> str:
    return f"batch:{batch_id}"


async def collect(reply: Reply, outcome: Outcome) -> tuple[int, bytes]:
    """A reply's status and whole body (a batch line's answer is never streamed out)."""
    outcome.status = reply.status
    if reply.stream is None:
        return reply.status, reply.body
    return reply.status, b"".join([chunk async for chunk in reply.stream])


class BatchRunner:
    """This gateway's batch executor."""

    def __init__(self, gateway: Gateway, files: Files, concurrency: int,
                 lease_s: float = LEASE_S, window_s: int = bl.WINDOW_S):
        self.gateway = gateway
        self.state = gateway.state
        self.files = files
        self.concurrency = max(1, concurrency)
        self.lease_s = lease_s
        self.window_s = window_s
        """The completion window of the batches created here (``--batch-window``)."""
        self.holder = uuid.uuid4().hex
        self.tasks = TaskSet("batches")
        self.running: dict[str, asyncio.Event] = {}
        """Batch id -> its cancel event, for the batches this gateway runs now."""
        self.wake = asyncio.Event()

    # -- finding batches -----------------------------------------------------------------
    async def loop(self) -> None:
        while True:
            try:
                await self.scan()
            except StateError as exc:
                log.warning("cannot look for batches", extra={"error": str(exc)})
            try:
                await asyncio.wait_for(self.wake.wait(), SCAN_S)
            except TimeoutError:
                pass
            self.wake.clear()

    async def scan(self) -> None:
        for raw in await self.state.list_records(ACTIVE, None):
            batch_id = json.loads(raw)["id"]
            if batch_id in self.running:
                continue
            if await self.state.claim(lease_name(batch_id), self.holder, time.time(),
                                      self.lease_s):
                self.running[batch_id] = asyncio.Event()
                self.tasks.spawn(self.run(batch_id), f"batch:{batch_id}")

    def cancel(self, batch_id: str) -> None:
        """Stop starting the batch's lines now (when this gateway runs it)."""
        event = self.running.get(batch_id)
        if event is not None:
            event.set()

    async def close(self) -> None:
        held = list(self.running)
        await self.tasks.close()
        for batch_id in held:  # the next gateway need not wait for the leases to expire
            try:
                await self.state.release(lease_name(batch_id), self.holder)
            except StateError:
                pass

    # -- running one batch ---------------------------------------------------------------
    async def run(self, batch_id: str) -> None:
        cancel = self.running[batch_id]
        main = asyncio.current_task()
        keeper = asyncio.get_running_loop().create_task(self.keep(batch_id, cancel, main))
        try:
            await self.execute(batch_id, cancel)
        finally:
            await cancel_task(keeper)
            self.running.pop(batch_id, None)
            try:
                await self.state.release(lease_name(batch_id), self.holder)
            except StateError:
                pass  # it expires by itself

    async def keep(self, batch_id: str, cancel: asyncio.Event,
                   main: asyncio.Task[Any] | None) -> None:
        """Renew the lease; watch for a cancel asked elsewhere; stop the batch if the
        lease was lost (another gateway took it over)."""
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(WATCH_S)
            try:
                if not cancel.is_set() and await self.state.get_record(CANCEL, batch_id):
                    cancel.set()
                if time.monotonic() - renewed >= self.lease_s / 3:
                    if not await self.state.claim(lease_name(batch_id), self.holder,
                                                  time.time(), self.lease_s):
                        log.warning("lost the lease of a batch", extra={"batch": batch_id})
                        if main is not None:
                            main.cancel()
                        return
                    renewed = time.monotonic()
            except StateError as exc:
                log.warning("cannot renew a batch's lease", extra={"batch": batch_id,
                                                                    "error": str(exc)})

    async def save(self, owner: str, batch: dict[str, Any]) -> None:
        await self.state.put_record(BATCH, batch["id"], owner, json.dumps(batch).encode(),
                                    float(batch["created_at"]))

    async def execute(self, batch_id: str, cancel: asyncio.Event) -> None:
        entry = await self.state.get_record(BATCH, batch_id)
        if entry is None:
            await self.state.delete_record(ACTIVE, batch_id)
            return
        owner, batch = entry[0], json.loads(entry[1])
        if batch["status"] in bl.TERMINAL:
            await self.state.delete_record(ACTIVE, batch_id)
            return
        if await self.state.get_record(CANCEL, batch_id):
            cancel.set()
        content = await self.files.content(owner, batch["input_file_id"])
        if content is None:
            lines: list[bl.Line] = []
            errors = [{"code": "file_not_found", "message": "the input file no longer "
                       "exists", "param": "input_file_id", "line": None}]
        else:
            lines, errors = bl.validate_lines(content, batch["endpoint"])
        if batch["status"] == bl.VALIDATING and not cancel.is_set():
            now = int(time.time())
            if errors:
                batch = bl.transition(batch, bl.FAILED, now)
                batch["errors"] = {"object": "list", "data": errors}
                await self.save(owner, batch)
                await self.state.delete_record(ACTIVE, batch_id)
                return
            if now < batch["expires_at"]:  # (else nobody ran it in time: it expires)
                batch = bl.transition(batch, bl.IN_PROGRESS, now)
                batch["request_counts"] = {"total": len(lines), "completed": 0, "failed": 0}
                await self.save(owner, batch)
        expired = False
        if not cancel.is_set():
            if batch["status"] == bl.IN_PROGRESS:
                expired = not await self.run_lines(batch, owner, lines, cancel)
            else:
                expired = batch["status"] == bl.VALIDATING
        await self.finish(batch, owner, lines, cancel.is_set() and not expired, expired)

    async def run_lines(self, batch: dict[str, Any], owner: str, lines: list[bl.Line],
                        cancel: asyncio.Event) -> bool:
        """Run the lines not done yet; False when the window ended first."""
        done = await self.state.line_results(batch["id"])
        todo = iter([line for line in lines if line.index not in done])
        key = self.key_of(owner)
        expires_at = float(batch["expires_at"])
        expired = False

        async def worker() -> None:
            nonlocal expired
            for line in todo:  # one iterator shared by the workers: each line once
                if cancel.is_set():
                    return
                try:  # a line still running at expires_at is abandoned (no result)
                    async with asyncio.timeout(max(0.0, expires_at - time.time())):
                        status, data, request_id = await self.call(batch["endpoint"], line,
                                                                   key)
                except TimeoutError:
                    expired = True
                    return
                await self.state.put_line_result(
                    batch["id"], line.index, 200 <= status < 300,
                    bl.result_line(line.custom_id, status, request_id, data))

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        return not expired

    async def finish(self, batch: dict[str, Any], owner: str, lines: list[bl.Line],
                     cancelled: bool, expired: bool = False) -> None:
        now = int(time.time())
        if cancelled:
            asked = await self.state.get_record(CANCEL, batch["id"])
            batch = bl.transition(batch, bl.CANCELLING, now)
            if asked:
                batch["cancelling_at"] = json.loads(asked[1])["cancelling_at"]
        elif expired:
            batch = bl.transition(batch, bl.EXPIRED, now)
        elif batch["status"] == bl.IN_PROGRESS:
            batch = bl.transition(batch, bl.FINALIZING, now)
            await self.save(owner, batch)
        results = await self.state.line_results(batch["id"])
        failed = sum(1 for ok, _ in results.values() if not ok)
        batch["request_counts"] = {"total": len(lines), "completed": len(results) - failed,
                                   "failed": failed}  # (an expired line never ran: neither)
        if expired:
            results = {**results, **bl.expired_lines(lines, results)}
        output, errors = bl.assemble(results)
        if output and not batch["output_file_id"]:
            batch["output_file_id"] = (await self.files.create(
                owner, f"{batch['id']}_output.jsonl", "batch_output", output))["id"]
        if errors and not batch["error_file_id"]:
            batch["error_file_id"] = (await self.files.create(
                owner, f"{batch['id']}_error.jsonl", "batch_output", errors))["id"]
        if not expired:
            batch = bl.transition(batch, bl.CANCELLED if cancelled else bl.COMPLETED, now)
        await self.save(owner, batch)
        await self.state.delete_record(ACTIVE, batch["id"])
        await self.state.drop_line_results(batch["id"])
        log.info("batch finished", extra={"batch": batch["id"], "status": batch["status"],
                                          **batch["request_counts"]})

    # -- one line ------------------------------------------------------------------------
    def key_of(self, owner: str) -> ApiKey | None:
        """The key that created the batch, as it is now (None: revoked or removed)."""
        auth = self.gateway.auth
        if not auth.enabled and owner == ANONYMOUS:
            return auth.anonymous
        return auth.keys.get(owner)

    async def call(self, endpoint: str, line: bl.Line, key: ApiKey | None
                   ) -> tuple[int, bytes, str]:
        """One line through the gateway's handler: (status, body, request id)."""
        from .gateway import HANDLERS  # (the hot path imports nothing of the batches)

        gateway = self.gateway
        headers = {"content-type": "application/json"}
        raw = json.dumps(line.body).encode()
        for attempt in range(RETRIES):
            outcome = gateway.begin(endpoint, "POST", headers)
            outcome.key, outcome.priority = key, PRIORITY
            reply: Reply | None = None
            retry_after = 0
            try:
                try:
                    if key is None:
                        raise AuthError(401, "the API key that created this batch is no "
                                        "longer valid", "invalid_api_key",
                                        "invalid_request_error")
                    reply = await HANDLERS[endpoint](gateway, endpoint, headers, raw, outcome)
                    status, data = await collect(reply, outcome)
                except REFUSALS as exc:
                    status, data, extra = refusal(outcome, exc)
                    outcome.status = status
                    retry_after = next((int(v) for n, v in extra if n == b"retry-after"), 0)
            finally:
                if reply is not None and reply.upstream is not None:
                    if outcome.status == 200:
                        reply.upstream.release()
                    else:
                        reply.upstream.close()
                outcome.finish()
                await gateway.tenancy.finish(outcome)
            if status in (429, 503) and retry_after and attempt < RETRIES - 1:
                await asyncio.sleep(min(retry_after, 30))
                continue
            return status, data, outcome.request_id
        raise AssertionError("unreachable")  # (the last try always returns)
