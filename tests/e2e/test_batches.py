"""The Batch API end to end: ``/v1/files`` and ``/v1/batches`` with the official ``openai``
client against real parts (etcd, sim engines registered as a node would, a router, the
gateway as a process with its SQLite state directory).

A batch of 1,000 lines completes with 1,000 results; lines go at priority ``batch``;
invalid input fails the batch with OpenAI's ``errors``; a key's model allow-list applies
to its lines; a gateway restarted in the middle (its state directory kept) runs only the
lines not finished (counted at the sim); a cancel stops new lines at once; two gateways
sharing a real redis-server run a batch once, and a cancel asked on one stops the other.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from devtools.cluster import Cluster, free_port, http_get, wait_for
from tests.e2e.test_gateway import start_sim, wait_router_ready
from tests.support.redis import RedisServer

FAST, SLOW = "batch/fast", "batch/slow"
KEYS = {"alice": "sk-batch-alice-0123456789", "bob": "sk-batch-bob-0123456789",
        "carol": "sk-batch-carol-0123456789"}
CONCURRENCY = 4


class Env:
    def __init__(self, cluster: Cluster, router: str, sims: dict[str, str], state_dir: Path,
                 keyfile: Path):
        self.cluster, self.router, self.sims = cluster, router, sims
        self.state_dir, self.keyfile = state_dir, keyfile
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.starts = 0

    def start_gateway(self) -> None:
        self.starts += 1
        self.cluster.start_gateway(
            [self.router], name=f"batch-gateway-{self.starts}", port=self.port,
            args=["--api-keys-file", str(self.keyfile), "--state-dir", str(self.state_dir),
                  "--batch-concurrency", str(CONCURRENCY)])

    def stop_gateway(self) -> None:
        self.cluster.procs[f"batch-gateway-{self.starts}"].stop(grace=20)

    def client(self, who: str = "alice") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=KEYS[who], max_retries=0,
                             timeout=30)

    def dispatched(self, priority: str) -> float:
        """Requests the router's admission queue let through in class ``priority``."""
        text = http_get(f"{self.router}/metrics")[1].decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("nebula_router_queue_dispatched_total{")
                   and f'class="{priority}"' in line)

    def sim_requests(self, model: str) -> int:
        return int(json.loads(http_get(f"{self.sims[model]}/sim/stats")[1])["requests_total"])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    run = tmp_path_factory.mktemp("batches")
    cluster = Cluster(run / "run")
    try:
        cluster.start_etcd()
        sims = {FAST: start_sim(cluster, "batch-fast", FAST, "sim", "--output-tokens", "2",
                                "--itl-ms", "0"),
                SLOW: start_sim(cluster, "batch-slow", SLOW, "sim", "--output-tokens", "2",
                                "--ttft-ms", "250")}
        wait_router_ready()
        # with its admission queue on, the router counts what it let through by class
        _, router = cluster.start_router(args=["--max-running-per-replica", "64"])
        wait_for(lambda: len(json.loads(http_get(f"{router}/v1/models")[1])["data"]) == 2,
                 30, "router sees both models")
        keyfile = run / "keys.txt"
        keyfile.write_text("".join(
            f"{hashlib.sha256(KEYS[name].encode()).hexdigest()} {name}{extra}\n"
            for name, extra in (("alice", ""), ("bob", ""), ("carol", f" models={FAST}"))))
        e = Env(cluster, router, sims, run / "state", keyfile)
        e.start_gateway()
        yield e
    finally:
        cluster.stop_all(grace=5)


def chat_lines(model: str, n: int, prefix: str = "req") -> bytes:
    return "".join(json.dumps({
        "custom_id": f"{prefix}-{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": model, "max_tokens": 2,
                 "messages": [{"role": "user", "content": f"line {i}"}]}}) + "\n"
        for i in range(n)).encode()


def submit(c: openai.OpenAI, content: bytes, endpoint: str = "/v1/chat/completions",
           **kw: Any) -> Any:
    upload = c.files.create(file=("input.jsonl", content), purpose="batch")
    return c.batches.create(input_file_id=upload.id, endpoint=endpoint,  # type: ignore[arg-type]
                            completion_window="24h", **kw)


def wait_status(c: openai.OpenAI, batch_id: str, statuses: set[str], timeout: float) -> Any:
    found: dict[str, Any] = {}

    def done() -> bool:
        found["b"] = c.batches.retrieve(batch_id)
        return found["b"].status in statuses
    wait_for(done, timeout, f"batch {batch_id} {statuses}", 0.2)
    return found["b"]


def wait_progress(c: openai.OpenAI, batch_id: str, at_least: int, timeout: float = 60) -> Any:
    found: dict[str, Any] = {}

    def enough() -> bool:
        found["b"] = c.batches.retrieve(batch_id)
        counts = found["b"].request_counts
        return counts is not None and counts.completed + counts.failed >= at_least
    wait_for(enough, timeout, f"{at_least} lines of {batch_id} done", 0.05)
    return found["b"]


def results(c: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(x) for x in c.files.content(file_id).text.splitlines()]


# -- files -------------------------------------------------------------------------------

def test_files_are_the_uploaders_own(env: Env) -> None:
    alice, bob = env.client("alice"), env.client("bob")
    content = chat_lines(FAST, 3)
    f = alice.files.create(file=("mine.jsonl", content), purpose="batch")
    assert (f.object, f.bytes, f.filename, f.purpose) == ("file", len(content), "mine.jsonl",
                                                           "batch")
    assert alice.files.retrieve(f.id).id == f.id
    assert alice.files.content(f.id).read() == content
    assert f.id in [x.id for x in alice.files.list()]
    for call in (lambda: bob.files.retrieve(f.id), lambda: bob.files.content(f.id),
                 lambda: bob.files.delete(f.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert f.id not in [x.id for x in bob.files.list()]
    with pytest.raises(openai.BadRequestError):
        alice.files.create(file=("x.jsonl", content), purpose="fine-tune")
    assert alice.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        alice.files.retrieve(f.id)


def test_uploads_are_bounded(env: Env) -> None:
    _, small = env.cluster.start_gateway(
        [env.router], name="batch-gateway-small",
        args=["--api-keys-file", str(env.keyfile), "--max-file-bytes", "2000"])
    c = openai.OpenAI(base_url=f"{small}/v1", api_key=KEYS["alice"], max_retries=0,
                      timeout=30)
    assert c.files.create(file=("ok.jsonl", chat_lines(FAST, 1)), purpose="batch").bytes
    with pytest.raises(openai.APIStatusError) as info:
        c.files.create(file=("big.jsonl", chat_lines(FAST, 20)), purpose="batch")
    assert info.value.status_code == 413
    assert info.value.body["code"] == "file_too_large"  # type: ignore[index]
    env.cluster.procs["batch-gateway-small"].stop(grace=10)


# -- batches -----------------------------------------------------------------------------

def test_a_batch_of_1000_lines_completes_with_1000_results(env: Env) -> None:
    c = env.client()
    before, low = env.sim_requests(FAST), env.dispatched("batch")
    batch = submit(c, chat_lines(FAST, 1000), metadata={"run": "big"})
    assert (batch.status, batch.endpoint, batch.metadata) == ("validating",
                                                              "/v1/chat/completions",
                                                              {"run": "big"})
    done = wait_status(c, batch.id, {"completed", "failed"}, 300)
    assert done.status == "completed", done.errors
    assert (done.request_counts.total, done.request_counts.completed,
            done.request_counts.failed) == (1000, 1000, 0)
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    assert done.error_file_id is None
    lines = results(c, done.output_file_id)
    assert len(lines) == 1000
    assert sorted(x["custom_id"] for x in lines) == sorted(f"req-{i}" for i in range(1000))
    first = lines[0]
    assert set(first) == {"id", "custom_id", "response", "error"} and first["error"] is None
    assert first["response"]["status_code"] == 200 and first["response"]["request_id"]
    assert first["response"]["body"]["object"] == "chat.completion"
    assert env.sim_requests(FAST) - before == 1000  # each line once
    assert env.dispatched("batch") - low == 1000  # every line at the lowest priority
    assert batch.id in [b.id for b in c.batches.list(limit=100)]
    with pytest.raises(openai.NotFoundError):
        env.client("bob").batches.retrieve(batch.id)
    with pytest.raises(openai.ConflictError):
        c.batches.cancel(batch.id)


def test_other_endpoints_run_too(env: Env) -> None:
    c = env.client()
    emb = "".join(json.dumps({"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
                              "body": {"model": FAST, "input": f"text {i}"}}) + "\n"
                  for i in range(3)).encode()
    resp = "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/responses",
                               "body": {"model": FAST, "input": f"hi {i}",
                                        "max_output_tokens": 2}}) + "\n"
                   for i in range(3)).encode()
    for content, endpoint, kind in ((emb, "/v1/embeddings", "list"),
                                    (resp, "/v1/responses", "response")):
        done = wait_status(c, submit(c, content, endpoint).id, {"completed", "failed"}, 60)
        assert done.status == "completed" and done.request_counts.completed == 3
        assert {x["response"]["body"]["object"] for x in results(c, done.output_file_id)} \
            == {kind}


def test_invalid_lines_fail_the_batch_up_front(env: Env) -> None:
    c = env.client()
    good = chat_lines(FAST, 2).decode().splitlines()
    bad = "\n".join([good[0], good[0], good[1].replace("/v1/chat/completions",
                                                       "/v1/embeddings"), "{nope"]) + "\n"
    before = env.sim_requests(FAST)
    done = wait_status(c, submit(c, bad.encode()).id, {"failed", "completed"}, 60)
    assert done.status == "failed" and done.failed_at
    errors = [(e.code, e.line) for e in done.errors.data]
    assert errors == [("duplicate_custom_id", 2), ("mismatched_endpoint", 3),
                      ("invalid_json_line", 4)]
    assert env.sim_requests(FAST) == before  # nothing ran


def test_the_keys_model_allow_list_applies_to_its_lines(env: Env) -> None:
    c = env.client("carol")  # may use FAST only
    done = wait_status(c, submit(c, chat_lines(SLOW, 3)).id, {"completed", "failed"}, 60)
    assert done.status == "completed"
    assert (done.request_counts.completed, done.request_counts.failed) == (0, 3)
    assert done.output_file_id is None
    errors = results(c, done.error_file_id)
    assert {x["response"]["status_code"] for x in errors} == {403}
    assert errors[0]["response"]["body"]["error"]["code"] == "model_not_allowed"


def test_cancelling_stops_new_lines_at_once(env: Env) -> None:
    c = env.client()
    before = env.sim_requests(SLOW)
    batch = submit(c, chat_lines(SLOW, 200))
    wait_progress(c, batch.id, 4)
    cancelling = c.batches.cancel(batch.id)
    at_cancel = env.sim_requests(SLOW) - before
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    done = wait_status(c, batch.id, {"cancelled"}, 60)
    assert done.cancelled_at
    ran = env.sim_requests(SLOW) - before
    # lines already sent finish; none starts after the cancel (one per worker at most was
    # on its way to the engine when the count was read)
    assert ran <= at_cancel + CONCURRENCY
    assert done.request_counts.completed + done.request_counts.failed == ran < 200
    assert len(results(c, done.output_file_id)) == done.request_counts.completed
    time.sleep(1.0)
    assert env.sim_requests(SLOW) - before == ran


def test_a_restarted_gateway_resumes_without_repeating_finished_lines(env: Env) -> None:
    c = env.client()
    total = 96
    before = env.sim_requests(SLOW)
    batch = submit(c, chat_lines(SLOW, total, "resume"))
    wait_progress(c, batch.id, 8)
    env.stop_gateway()
    with sqlite3.connect(env.state_dir / "state.db") as db:
        finished = db.execute("SELECT COUNT(*) FROM batch_lines WHERE batch = ?",
                              (batch.id,)).fetchone()[0]
    assert 8 <= finished < total, "the batch must be stopped in the middle"
    sent_before = env.sim_requests(SLOW) - before
    env.start_gateway()
    done = wait_status(c, batch.id, {"completed", "failed"}, 120)
    assert done.status == "completed"
    assert done.request_counts.completed == total
    lines = results(c, done.output_file_id)
    assert sorted(x["custom_id"] for x in lines) == sorted(f"resume-{i}"
                                                           for i in range(total))
    # the new gateway ran exactly the lines without a result, no finished one again
    assert env.sim_requests(SLOW) - before - sent_before == total - finished


def test_two_gateways_on_one_redis_run_a_batch_once(env: Env, tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        urls = []
        for name in ("batch-redis-a", "batch-redis-b"):
            _, url = env.cluster.start_gateway(
                [env.router], name=name,
                args=["--api-keys-file", str(env.keyfile), "--state-url", server.url,
                      "--batch-concurrency", str(CONCURRENCY)])
            urls.append(url)
        a, b = (openai.OpenAI(base_url=f"{u}/v1", api_key=KEYS["alice"], max_retries=0,
                              timeout=30) for u in urls)
        before = env.sim_requests(FAST)
        batch = submit(a, chat_lines(FAST, 60, "shared"))
        done = wait_status(b, batch.id, {"completed", "failed"}, 120)  # seen from the other
        assert done.status == "completed" and done.request_counts.completed == 60
        assert len(results(b, done.output_file_id)) == 60
        assert env.sim_requests(FAST) - before == 60  # each line once, by one gateway
        # a cancel asked on one gateway stops the batch the other may be running
        slow_before = env.sim_requests(SLOW)
        long = submit(a, chat_lines(SLOW, 200, "shared-slow"))
        wait_progress(b, long.id, 4)
        assert b.batches.cancel(long.id).status == "cancelling"
        at_cancel = env.sim_requests(SLOW) - slow_before
        stopped = wait_status(a, long.id, {"cancelled"}, 60)
        ran = env.sim_requests(SLOW) - slow_before
        # (it sees the cancel within half a second: 4 lines of 250 ms each at most start)
        assert ran <= at_cancel + 3 * CONCURRENCY
        assert stopped.request_counts.completed + stopped.request_counts.failed == ran < 200
    finally:
        for name in ("batch-redis-a", "batch-redis-b"):
            if name in env.cluster.procs:
                env.cluster.procs[name].stop(grace=10)
        server.stop()


def test_a_batch_past_its_window_expires_with_its_unfinished_lines_as_errors(
        env: Env) -> None:
    """A gateway whose batches have 3 s (``--batch-window``): the slow lines cannot all run;
    at expires_at none starts, the batch is expired, and every line is in one of its files."""
    _, url = env.cluster.start_gateway(
        [env.router], name="batch-gateway-expiry",
        args=["--api-keys-file", str(env.keyfile), "--batch-window", "3",
              "--batch-concurrency", "2"])
    c = openai.OpenAI(base_url=f"{url}/v1", api_key=KEYS["alice"], max_retries=0, timeout=30)
    kept = c.files.create(file=("kept.jsonl", chat_lines(FAST, 1)), purpose="batch",
                          expires_after={"anchor": "created_at", "seconds": 3600})
    assert kept.expires_at == kept.created_at + 3600
    with pytest.raises(openai.BadRequestError):
        c.files.create(file=("x.jsonl", chat_lines(FAST, 1)), purpose="batch",
                       expires_after={"anchor": "created_at", "seconds": 10})
    total = 200
    before = env.sim_requests(SLOW)
    batch = submit(c, chat_lines(SLOW, total, "exp"))
    assert batch.expires_at == batch.created_at + 3
    done = wait_status(c, batch.id, {"expired", "completed", "failed"}, 30)
    assert done.status == "expired" and done.expired_at >= batch.expires_at
    ran = env.sim_requests(SLOW) - before
    finished = results(c, done.output_file_id)
    errors = results(c, done.error_file_id)
    assert 0 < len(finished) == done.request_counts.completed < total
    assert done.request_counts.failed == 0 and done.request_counts.total == total
    assert len(finished) + len(errors) == total
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert {e["response"] for e in errors} == {None}
    assert sorted(x["custom_id"] for x in finished + errors) == sorted(
        f"exp-{i}" for i in range(total))
    # none started after the window: the lines abandoned at expires_at were sent, no more
    assert len(finished) <= ran <= len(finished) + 2
    time.sleep(1.0)
    assert env.sim_requests(SLOW) - before == ran
    env.cluster.procs["batch-gateway-expiry"].stop(grace=10)
