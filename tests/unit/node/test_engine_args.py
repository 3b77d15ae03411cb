"""Engine arguments from a plan: an allow-list per engine, remote code only when the spec says."""

from __future__ import annotations

import pytest

from nebula_node.engines import LlamaCppAdapter, ReplicaSpec, SimAdapter, VllmAdapter, sim
from nebula_node.sim.main import build_parser
from nebula_node.supervisor import engine_listen_host


def spec(engine: str = "vllm", *args: str, trust: bool = False, name: str = "Org/Model"
         ) -> ReplicaSpec:
    return ReplicaSpec(model_uid="m", model_name=name, engine=engine, replica_id="r0",
                       port=10814, engine_args=args, trust_remote_code=trust)


@pytest.mark.parametrize("args", [
    ("--max-model-len", "4096", "--gpu-memory-utilization", "0.9", "--enforce-eager"),
    ("--max_model_len=4096", "--dtype", "half"),  # vLLM reads underscores as dashes
    ("-tp", "2", "--seed", "-1", "--api-key", "sk-x"),  # "-1" is a value, not a flag
    ("--limit-mm-per-prompt", '{"image": 2}', "--allowed-media-domains", "upload.example"),
])
def test_vllm_allows_tuning_flags(args: tuple[str, ...]) -> None:
    assert VllmAdapter().refusal(spec("vllm", *args)) is None


@pytest.mark.parametrize(("args", "flag"), [
    (("--config", "/etc/evil.yaml"), "--config"),
    (("--host", "0.0.0.0"), "--host"),
    (("--served-model-name", "other"), "--served-model-name"),
    (("--max-model-len", "4096", "--download-dir=/"), "--download-dir"),
    (("--lora-modules", "x=/tmp/x"), "--lora-modules"),
])
def test_vllm_refuses_unknown_flags_naming_them(args: tuple[str, ...], flag: str) -> None:
    reason = VllmAdapter().refusal(spec("vllm", *args))
    assert reason is not None and flag in reason and "not allowed for engine vllm" in reason


@pytest.mark.parametrize("flag", ["--trust-remote-code", "--trust_remote_code"])
def test_vllm_trust_remote_code_only_when_the_spec_allows_it(flag: str) -> None:
    adapter = VllmAdapter()
    reason = adapter.refusal(spec("vllm", flag))
    assert reason is not None and "trust_remote_code" in reason and "model spec" in reason
    assert adapter.refusal(spec("vllm", flag, trust=True)) is None


def test_llamacpp_allow_list() -> None:
    adapter = LlamaCppAdapter("/usr/bin/python3", "/m.gguf")
    assert adapter.refusal(spec("llamacpp", "--n_gpu_layers", "-1", "--n_ctx", "512",
                                "--embedding", "True")) is None
    for flag in ("--hf_model_repo_id", "--config_file", "--rpc_servers", "--port"):
        reason = adapter.refusal(spec("llamacpp", flag, "x"))
        assert reason is not None and flag in reason
    # llama.cpp has no remote code to trust: the flag is merely unknown there.
    reason = adapter.refusal(spec("llamacpp", "--trust-remote-code", trust=True))
    assert reason is not None and "not allowed" in reason


def test_sim_allow_list_is_its_own_flags_but_those_the_node_sets() -> None:
    adapter = SimAdapter("/venv/bin/nebula-sim")
    assert adapter.refusal(spec("sim", "--ttft-ms", "5", "--itl-ms", "1", "--hang")) is None
    for flag in ("--no-such-flag", "--host", "--listen", "--served-model-name"):
        reason = adapter.refusal(spec("sim", flag, "x"))
        assert reason is not None and flag in reason


def test_sim_allow_list_keeps_in_step_with_the_sims_parser() -> None:
    flags = {flag for action in build_parser()._actions for flag in action.option_strings}
    assert sim.POLICY.allowed == flags - sim.NODE_SETS and sim.NODE_SETS <= flags


def test_a_model_name_or_uid_that_reads_as_a_flag_is_refused() -> None:
    reason = VllmAdapter().refusal(spec("vllm", name="--trust-remote-code"))
    assert reason is not None and "starts with '-'" in reason


def test_trust_remote_code_is_part_of_the_process_identity() -> None:
    assert not spec("vllm").same_process(spec("vllm", trust=True))


@pytest.mark.parametrize(("engine_host", "expected"), [
    ("0.0.0.0", "10.0.0.5"), ("", "10.0.0.5"), ("::", "10.0.0.5"),
    ("127.0.0.1", "127.0.0.1"), ("10.0.0.5", "10.0.0.5"),
])
def test_engines_listen_on_the_advertise_host_never_every_interface(engine_host: str,
                                                                    expected: str) -> None:
    assert engine_listen_host(engine_host, "10.0.0.5") == expected
