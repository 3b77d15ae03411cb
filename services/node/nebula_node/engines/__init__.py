"""Engine adapters by name."""

from __future__ import annotations

import shutil

from .base import EngineAdapter, MetricsSample, ReplicaSpec, parse_vllm_metrics, prefix_hit_rate
from .llamacpp import LlamaCppAdapter, llamacpp_available
from .sim import SimAdapter
from .vllm import VllmAdapter

__all__ = [
    "EngineAdapter",
    "LlamaCppAdapter",
    "MetricsSample",
    "ReplicaSpec",
    "SimAdapter",
    "VllmAdapter",
    "available_engines",
    "build_adapters",
    "parse_vllm_metrics",
    "prefix_hit_rate",
]


def build_adapters(vllm_bin: str = "vllm", llamacpp_python: str | None = None,
                   llamacpp_model: str | None = None, sim_bin: str | None = None
                   ) -> dict[str, EngineAdapter]:
    return {
        "vllm": VllmAdapter(vllm_bin),
        "llamacpp": LlamaCppAdapter(llamacpp_python, llamacpp_model),
        "sim": SimAdapter(sim_bin),
    }


def available_engines(vllm_bin: str = "vllm") -> list[str]:
    """Engines this host can run: vllm when its binary is found, llamacpp when importable."""
    engines = []
    if shutil.which(vllm_bin):
        engines.append("vllm")
    if llamacpp_available():
        engines.append("llamacpp")
    engines.append("sim")
    return engines
