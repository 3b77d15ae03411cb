"""A bounded load driver for the failure scenarios.

Sends a fixed number of mixed chat requests (streamed and not, round-robin over
the models) through the gateway at a fixed concurrency and classifies every one:

- ``succeeded``: a full answer (non-streamed: 200 with a ``finish_reason``;
  streamed: a ``finish_reason`` and ``data: [DONE]``);
- ``failed_clear``: an HTTP error status with an OpenAI error body, or a stream
  that ended with an SSE ``error`` event — the client knows it failed;
- ``lost``: no answer within the timeout, a connection dropped without a status,
  a success status with a broken body, or a stream cut without an error event.

Bounded in count (``total``) and time (``timeout`` per request, starts paced by
``rate``), so a scenario can never hang on it. Runs in a thread with its own
event loop, so that the scenario can do its damage synchronously meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

KINDS = ("succeeded", "failed_clear", "lost")


@dataclass
class Outcome:
    """One request's classification, with a short reason for anything not succeeded."""

    index: int
    stream: bool
    model: str
    kind: str
    status: int = 0
    detail: str = ""
    replica: str = ""
    seconds: float = 0.0


@dataclass
class LoadResult:
    """Counts per kind, split by streamed / non-streamed."""

    outcomes: list[Outcome] = field(default_factory=list)
    started_at: float = 0.0
    elapsed: float = 0.0

    def count(self, kind: str | None = None, stream: bool | None = None) -> int:
        return sum(1 for o in self.outcomes
                   if (kind is None or o.kind == kind) and (stream is None or o.stream == stream))

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    def summary(self) -> dict[str, Any]:
        """The figures a scenario reports (and docs/reliability.md shows)."""
        out: dict[str, Any] = {"sent": self.sent,
                               **{k: self.count(k) for k in KINDS},
                               "elapsed_s": round(self.elapsed, 2)}
        for label, flag in (("stream", True), ("non_stream", False)):
            out[label] = {"sent": self.count(stream=flag),
                          **{k: self.count(k, flag) for k in KINDS}}
        return out

    def samples(self, limit: int = 8) -> list[str]:
        """A few non-succeeded outcomes, for assertion messages."""
        bad = [o for o in self.outcomes if o.kind != "succeeded"]
        reasons = Counter(f"{o.kind} stream={o.stream} status={o.status} {o.detail[:160]}"
                          for o in bad)
        return [f"{n}x {text}" for text, n in reasons.most_common(limit)]


def _is_error_body(raw: bytes) -> bool:
    try:
        data = json.loads(raw)
    except ValueError:
        return False
    err = data.get("error") if isinstance(data, dict) else None
    return isinstance(err, dict) and isinstance(err.get("message"), str)


def classify_body(raw: bytes) -> tuple[str, str]:
    """A non-streamed 200 body -> (kind, detail)."""
    try:
        data = json.loads(raw)
        choice = data["choices"][0]
    except (ValueError, KeyError, IndexError, TypeError):
        return "lost", f"200 with an unusable body: {raw[:120]!r}"
    if choice.get("finish_reason"):
        return "succeeded", ""
    return "lost", "200 without finish_reason"


class SseScan:
    """Incremental SSE parser that remembers what a stream has shown so far."""

    def __init__(self) -> None:
        self._buf = b""
        self.done = False
        self.finished = False
        self.error: str | None = None
        self.chunks = 0

    def feed(self, data: bytes) -> None:
        self._buf += data.replace(b"\r\n", b"\n")
        while b"\n\n" in self._buf:
            frame, self._buf = self._buf.split(b"\n\n", 1)
            self._frame(frame)

    def _frame(self, frame: bytes) -> None:
        event = None
        payload = []
        for line in frame.split(b"\n"):
            if line.startswith(b"event:"):
                event = line[6:].strip()
            elif line.startswith(b"data:"):
                payload.append(line[5:].strip())
        if not payload:
            return
        text = b"\n".join(payload)
        if text == b"[DONE]":
            self.done = True
            return
        try:
            obj = json.loads(text)
        except ValueError:
            self.error = self.error or f"unparseable frame {text[:80]!r}"
            return
        if event == b"error" or (isinstance(obj, dict) and "error" in obj):
            err = obj.get("error") if isinstance(obj, dict) else None
            self.error = str(err.get("message") if isinstance(err, dict) else err)
            return
        self.chunks += 1
        for choice in obj.get("choices") or []:
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self.finished = True

    def verdict(self) -> tuple[str, str]:
        if self.error is not None:
            return "failed_clear", f"error event: {self.error}"
        if self.done and self.finished:
            return "succeeded", ""
        return "lost", (f"stream truncated without an error event after {self.chunks} "
                        f"chunks (done={self.done} finish_reason={self.finished})")


@dataclass
class LoadSpec:
    """What to send: ``total`` requests, ``concurrency`` at once, starts paced by ``rate``."""

    base_url: str
    models: tuple[str, ...]
    total: int = 200
    concurrency: int = 8
    rate: float = 0.0
    """Request starts per second (0 = as fast as the concurrency allows)."""
    timeout: float = 30.0
    stream_every: int = 2
    """Every n-th request is streamed (1 = all, 0 = none)."""
    max_tokens: int = 0
    api_key: str | None = None


async def _one(session: aiohttp.ClientSession, spec: LoadSpec, index: int) -> Outcome:
    stream = spec.stream_every > 0 and index % spec.stream_every == 0
    model = spec.models[index % len(spec.models)]
    body: dict[str, Any] = {"model": model, "stream": stream,
                            "messages": [{"role": "user", "content": f"chaos request {index}"}]}
    if spec.max_tokens:
        body["max_tokens"] = spec.max_tokens
    headers = {"content-type": "application/json"}
    if spec.api_key:
        headers["authorization"] = f"Bearer {spec.api_key}"
    out = Outcome(index, stream, model, "lost")
    started = time.monotonic()
    try:
        async with asyncio.timeout(spec.timeout):
            async with session.post(f"{spec.base_url}/v1/chat/completions", json=body,
                                    headers=headers) as resp:
                out.status = resp.status
                out.replica = resp.headers.get("x-nebula-replica", "")
                ctype = resp.headers.get("content-type", "")
                if resp.status >= 400:
                    raw = await resp.read()
                    if _is_error_body(raw):
                        out.kind, out.detail = "failed_clear", raw[:200].decode("utf-8",
                                                                                "replace")
                    else:
                        out.detail = f"error status without an OpenAI body: {raw[:120]!r}"
                elif stream and ctype.startswith("text/event-stream"):
                    scan = SseScan()
                    async for chunk in resp.content.iter_any():
                        scan.feed(chunk)
                    out.kind, out.detail = scan.verdict()
                else:
                    out.kind, out.detail = classify_body(await resp.read())
    except TimeoutError:
        out.kind, out.detail = "lost", f"no complete answer within {spec.timeout:g}s"
    except (aiohttp.ClientError, OSError) as exc:
        # Includes a stream whose connection dropped: without an error event, lost.
        out.kind, out.detail = "lost", f"{type(exc).__name__}: {exc}"
    out.seconds = time.monotonic() - started
    return out


async def run_load(spec: LoadSpec, result: LoadResult | None = None,
                   stop: threading.Event | None = None) -> LoadResult:
    """Send ``spec.total`` requests and classify each; never runs past the per-request bound.

    ``result`` (optional) is filled in as requests finish, so another thread can
    watch the progress; once ``stop`` is set no new request starts (those in flight end).
    """
    result = result if result is not None else LoadResult()
    result.started_at = time.time()
    sem = asyncio.Semaphore(spec.concurrency)
    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def guarded(i: int) -> None:
            async with sem:
                result.outcomes.append(await _one(session, spec, i))

        tasks = []
        for i in range(spec.total):
            if spec.rate > 0:
                delay = started + i / spec.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            if stop is not None and stop.is_set():
                break
            tasks.append(asyncio.ensure_future(guarded(i)))
        await asyncio.gather(*tasks)
    result.outcomes.sort(key=lambda o: o.index)
    result.elapsed = time.monotonic() - started
    return result


class LoadThread:
    """``run_load`` in a background thread: start, do damage, then ``result()``."""

    def __init__(self, spec: LoadSpec):
        self.spec = spec
        self.live = LoadResult()
        self._result: LoadResult | None = None
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="chaos-load", daemon=True)

    def _main(self) -> None:
        try:
            self._result = asyncio.run(run_load(self.spec, self.live, self._stop))
        except BaseException as exc:
            self._error = exc

    def start(self) -> LoadThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Start no more requests: the load ends with those in flight."""
        self._stop.set()

    def done_count(self) -> int:
        """Requests finished so far (a list append is atomic: no lock needed)."""
        return len(self.live.outcomes)

    def wait_done(self, n: int, timeout: float = 60) -> None:
        """Block until ``n`` requests have finished (the damage then lands mid-load)."""
        deadline = time.monotonic() + timeout
        while self.done_count() < n:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise TimeoutError(f"load driver finished only {self.done_count()} of {n} "
                                   f"requests")
            time.sleep(0.02)

    def result(self, timeout: float | None = None) -> LoadResult:
        bound = timeout if timeout is not None else self.bound()
        self._thread.join(bound)
        if self._thread.is_alive():
            raise TimeoutError(f"load driver still running after {bound:.0f}s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def bound(self) -> float:
        """The longest the driver can possibly run."""
        spec = self.spec
        pacing = spec.total / spec.rate if spec.rate > 0 else 0.0
        waves = -(-spec.total // spec.concurrency)
        return pacing + waves * spec.timeout + 10
