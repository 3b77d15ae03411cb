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
    "parse_media_domains",
    "parse_vllm_metrics",
    "prefix_hit_rate",
]


def build_adapters(vllm_bin: str = "vllm", llamacpp_python: str | None = None,
                   llamacpp_model: str | None = None, sim_bin: str | None = None,
                   media_domains: tuple[str, ...] = ()) -> dict[str, EngineAdapter]:
    return {
        "vllm": VllmAdapter(vllm_bin, media_domains),
        "llamacpp": LlamaCppAdapter(llamacpp_python, llamacpp_model),
        "sim": SimAdapter(sim_bin),
    }


def parse_media_domains(text: str | None) -> tuple[str, ...]:
    """``--media-domains``: comma-separated host names (vLLM matches them exactly)."""
    hosts: list[str] = []
    for raw in (text or "").split(","):
        host = raw.strip().lower()
        if not host:
            continue
        if not all(part and all(c.isalnum() or c == "-" for c in part)
                   for part in host.split(".")):
            raise ValueError(f"--media-domains: {raw.strip()!r} is not a host name")
        hosts.append(host)
    return tuple(hosts)


def available_engines(vllm_bin: str = "vllm") -> list[str]:
    """Engines this host can run: vllm when its binary is found, llamacpp when importable."""
    engines = []
    if shutil.which(vllm_bin):
        engines.append("vllm")
    if llamacpp_available():
        engines.append("llamacpp")
    engines.append("sim")
    return engines
