"""vLLM: ``vllm serve`` on the GPUs of the assignment."""

from __future__ import annotations

import aiohttp

from nebula_common.capabilities import Capability

from .args import ArgPolicy, arg_count, arg_value
from .base import EngineAdapter, ReplicaSpec, http_ok, models_listed

# What an operator tunes. Not here: what the node sets itself (--host, --port,
# --served-model-name), what reads files or fetches code and weights from elsewhere
# (--config, --download-dir, LoRA modules, --hf-overrides, --allowed-local-media-path).
POLICY = ArgPolicy("vllm", frozenset({
    "--allowed-media-domains", "--api-key", "--block-size", "--chat-template",
    "--chat-template-content-format", "--convert", "--cpu-offload-gb", "--data-parallel-size",
    "-dp", "--disable-log-requests", "--disable-log-stats", "--dtype",
    "--enable-auto-tool-choice", "--enable-chunked-prefill", "--no-enable-chunked-prefill",
    "--enable-expert-parallel", "--enable-log-requests", "--enable-prefix-caching",
    "--no-enable-prefix-caching", "--enforce-eager", "--generation-config",
    "--gpu-memory-utilization", "--kv-cache-dtype", "--limit-mm-per-prompt", "--load-format",
    "--max-logprobs", "--max-model-len", "--max-num-batched-tokens", "--max-num-seqs",
    "--max-seq-len-to-capture", "--override-generation-config", "--pipeline-parallel-size",
    "-pp", "--quantization", "-q", "--reasoning-parser", "--revision", "--runner",
    "--scheduling-policy", "--seed", "--swap-space", "--task", "--tensor-parallel-size", "-tp",
    "--tokenizer", "--tokenizer-mode", "--tokenizer-revision", "--tool-call-parser",
    "--uvicorn-log-level",
}), dashes_for_underscores=True, trust_remote_code="--trust-remote-code")


DEFAULT_MAX_NUM_SEQS = 256
"""vLLM's ``--max-num-seqs`` when not given, for ``vllm serve`` (UsageContext
OPENAI_API_SERVER) in the version the GPU image pins (vllm/vllm-openai:v0.11.0,
deploy/docker/images.sh): ``EngineArgs.get_batch_defaults`` in vllm/engine/arg_utils.py
gives 256, and 1024 on a GPU of 70 GiB or more that is not an A100 (H100, H200, MI300x).
The node does not know which from the plan, so it declares the smaller: on those GPUs the
router holds what is past 256 per replica; pass ``--max-num-seqs`` to declare more."""

POOLING_TASKS = frozenset({"embed", "embedding", "score", "classify", "reward"})
GENERATE = frozenset({Capability.CHAT, Capability.COMPLETIONS, Capability.RESPONSES,
                      Capability.TOKENIZE, Capability.TOOLS, Capability.CONTINUATION})
POOLING = frozenset({Capability.EMBEDDINGS, Capability.SCORE, Capability.RERANK,
                     Capability.TOKENIZE})


class VllmAdapter(EngineAdapter):
    name = "vllm"
    arg_policy = POLICY

    def __init__(self, binary: str = "vllm", media_domains: tuple[str, ...] = ()):
        self.binary = binary
        # vLLM fetches the image/video/audio URLs of a request itself; with this list it
        # fetches from these hosts only (the gateway's --media-allow refuses the rest first)
        self.media_domains = media_domains

    def command(self, replica: ReplicaSpec, port: int, host: str) -> list[str]:
        argv = [self.binary, "serve", replica.model_name, "--host", host, "--port", str(port),
                "--served-model-name", replica.model_name]
        if replica.model_uid != replica.model_name:
            argv.append(replica.model_uid)
        if len(replica.gpu_indices) > 1 and "--tensor-parallel-size" not in replica.engine_args:
            argv += ["--tensor-parallel-size", str(len(replica.gpu_indices))]
        if self.media_domains and "--allowed-media-domains" not in replica.engine_args:
            argv += ["--allowed-media-domains", *self.media_domains]
        argv += list(replica.engine_args)
        return argv

    def capabilities(self, replica: ReplicaSpec) -> frozenset[Capability]:
        # a pooling model (--task embed|score|classify|reward, --runner pooling) serves
        # embeddings and scores instead of generating text
        args = replica.engine_args
        pooling = (arg_value(args, "--task") in POOLING_TASKS
                   or arg_value(args, "--runner") == "pooling"
                   or arg_value(args, "--convert") in POOLING_TASKS)
        return POOLING if pooling else GENERATE

    def concurrency(self, replica: ReplicaSpec) -> int:
        count = arg_count(replica.engine_args, "--max-num-seqs")
        return count if count else DEFAULT_MAX_NUM_SEQS

    def env(self, replica: ReplicaSpec, base: dict[str, str]) -> dict[str, str]:
        env = dict(base)
        if replica.gpu_indices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in replica.gpu_indices)
        return env

    async def ready(self, session: aiohttp.ClientSession, base_url: str,
                    replica: ReplicaSpec) -> bool:
        return await http_ok(session, f"{base_url}/health", timeout=3.0) and await models_listed(
            session, base_url, {replica.model_name, replica.model_uid}, timeout=3.0)
