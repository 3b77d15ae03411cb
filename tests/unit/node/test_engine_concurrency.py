"""What each engine adapter declares as its engine's concurrency (Endpoint.max_concurrency)."""

from __future__ import annotations

import pytest

from nebula_node.engines import LlamaCppAdapter, ReplicaSpec, SimAdapter, VllmAdapter
from nebula_node.engines.vllm import DEFAULT_MAX_NUM_SEQS


def spec(engine: str, *args: str) -> ReplicaSpec:
    return ReplicaSpec(model_uid="m", model_name="org/m", engine=engine, replica_id="r0",
                       port=10814, engine_args=args)


@pytest.mark.parametrize("args,declared", [
    ((), DEFAULT_MAX_NUM_SEQS),
    (("--max-num-seqs", "32"), 32),
    (("--max_num_seqs=16",), 16),          # vLLM reads underscores as dashes
    (("--max-num-seqs", "64", "--max-num-seqs", "8"), 8),  # the last one wins, as in argparse
    (("--max-num-seqs", "lots"), DEFAULT_MAX_NUM_SEQS),    # vLLM refuses it at start anyway
])
def test_vllm_declares_max_num_seqs_or_its_default(args: tuple[str, ...], declared: int) -> None:
    assert VllmAdapter().concurrency(spec("vllm", *args)) == declared


def test_vllm_default_is_the_documented_one() -> None:
    assert DEFAULT_MAX_NUM_SEQS == 256


def test_sim_declares_its_max_concurrency_and_unlimited_is_undeclared() -> None:
    sim = SimAdapter("/bin/nebula-sim")
    assert sim.concurrency(spec("sim", "--ttft-ms", "5", "--max-concurrency", "8")) == 8
    assert sim.concurrency(spec("sim", "--max-concurrency=3")) == 3
    assert sim.concurrency(spec("sim")) == 0
    assert sim.concurrency(spec("sim", "--max-concurrency", "0")) == 0


def test_llamacpp_serves_one_request_at_a_time() -> None:
    assert LlamaCppAdapter().concurrency(spec("llamacpp")) == 1
    assert LlamaCppAdapter().concurrency(spec("llamacpp", "--n_ctx", "4096")) == 1
