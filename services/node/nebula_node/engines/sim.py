"""The simulator engine shipped with Nebula (``nebula-sim``)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import aiohttp

from nebula_common.capabilities import Capability

from .args import ArgPolicy, arg_count
from .base import EngineAdapter, ReplicaSpec, http_ok, models_listed

NODE_SETS = frozenset({"--host", "--port", "--listen", "--model-name", "--model",
                       "--served-model-name", "--help", "-h"})
"""Flags of ``nebula-sim`` that the node sets itself, so no plan may."""

# Every other flag of nebula-sim (a unit test keeps the two lists in step). Written out
# rather than read from its parser: that parser reads NEBULA_* variables, the node's own.
POLICY = ArgPolicy("sim", frozenset({
    "--crash-after", "--crlf-frames", "--embedding-dim", "--embeddings-unsupported",
    "--fail-rate", "--hang", "--hang-health", "--itl-ms", "--kv-admission", "--kv-cache-tokens",
    "--log-format",
    "--log-level", "--max-concurrency", "--max-model-len", "--output-tokens",
    "--prefill-ms-per-token", "--prefix-block-chars", "--prefix-cache-blocks", "--seed",
    "--stream-cut-after", "--ttft-ms",
}))


def sim_binary() -> str:
    """``nebula-sim`` next to this interpreter (the venv), else from PATH."""
    local = Path(sys.executable).parent / "nebula-sim"
    if local.exists():
        return str(local)
    return shutil.which("nebula-sim") or "nebula-sim"


CAPABILITIES = frozenset({Capability.CHAT, Capability.COMPLETIONS, Capability.RESPONSES,
                          Capability.EMBEDDINGS, Capability.TOKENIZE, Capability.TOOLS,
                          Capability.CONTINUATION, Capability.RERANK, Capability.SCORE})
"""What nebula-sim serves (its routes in ``nebula_node.sim.app``)."""


class SimAdapter(EngineAdapter):
    name = "sim"
    arg_policy = POLICY

    def __init__(self, binary: str | None = None):
        self.binary = binary or sim_binary()

    def capabilities(self, replica: ReplicaSpec) -> frozenset[Capability]:
        return CAPABILITIES

    def concurrency(self, replica: ReplicaSpec) -> int:
        # nebula-sim --max-concurrency N runs N sequences and queues the rest (0: unlimited)
        return arg_count(replica.engine_args, "--max-concurrency") or 0

    def command(self, replica: ReplicaSpec, port: int, host: str) -> list[str]:
        return [self.binary, "--host", host, "--port", str(port),
                "--model-name", replica.model_name,
                "--served-model-name", replica.model_uid, *replica.engine_args]

    async def ready(self, session: aiohttp.ClientSession, base_url: str,
                    replica: ReplicaSpec) -> bool:
        # The listing guards against a port race with another node on this host: a
        # foreign engine that happens to answer on our port does not serve our uid.
        return await http_ok(session, f"{base_url}/health", timeout=3.0) and await models_listed(
            session, base_url, {replica.model_uid}, timeout=3.0)
