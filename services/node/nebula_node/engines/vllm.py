"""vLLM: ``vllm serve`` on the GPUs of the assignment."""

from __future__ import annotations

import aiohttp

from .base import EngineAdapter, ReplicaSpec, http_ok, models_listed


class VllmAdapter(EngineAdapter):
    name = "vllm"

    def __init__(self, binary: str = "vllm"):
        self.binary = binary

    def command(self, replica: ReplicaSpec, port: int, host: str = "0.0.0.0") -> list[str]:
        argv = [self.binary, "serve", replica.model_name, "--host", host, "--port", str(port),
                "--served-model-name", replica.model_name]
        if replica.model_uid != replica.model_name:
            argv.append(replica.model_uid)
        if len(replica.gpu_indices) > 1 and "--tensor-parallel-size" not in replica.engine_args:
            argv += ["--tensor-parallel-size", str(len(replica.gpu_indices))]
        argv += list(replica.engine_args)
        return argv

    def env(self, replica: ReplicaSpec, base: dict[str, str]) -> dict[str, str]:
        env = dict(base)
        if replica.gpu_indices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in replica.gpu_indices)
        return env

    async def ready(self, session: aiohttp.ClientSession, base_url: str,
                    replica: ReplicaSpec) -> bool:
        return await http_ok(session, f"{base_url}/health", timeout=3.0) and await models_listed(
            session, base_url, {replica.model_name, replica.model_uid}, timeout=3.0)
