"""GPU inventory from ``nvidia-smi`` (none when the binary is absent)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess

from nebula_common.records import GpuInfo

log = logging.getLogger(__name__)

NVIDIA_SMI_ARGS = ["--query-gpu=index,name,memory.total,memory.used",
                   "--format=csv,noheader,nounits"]


def _int(value: str) -> int:
    try:
        return int(float(value.strip()))
    except ValueError:
        return 0  # "[N/A]" on some boards


def parse_nvidia_smi(text: str) -> list[GpuInfo]:
    """Parse ``index, name, memory.total, memory.used`` CSV lines (MiB, no units)."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        # A GPU name may itself contain commas: index first, the two numbers last.
        name = ", ".join(parts[1:-2])
        gpus.append(GpuInfo(index=int(parts[0]), name=name,
                            memory_total_mb=_int(parts[-2]), memory_used_mb=_int(parts[-1])))
    return gpus


async def query_gpus(binary: str = "nvidia-smi", timeout: float = 10.0) -> list[GpuInfo]:
    """The host's GPUs, or [] when nvidia-smi is missing or fails.

    Run from a thread with ``subprocess`` (vfork + exec): a plain fork() of this
    process, which has gRPC threads, can crash the child before it execs.
    """
    path = shutil.which(binary)
    if not path:
        return []
    try:
        result = await asyncio.to_thread(
            subprocess.run, [path, *NVIDIA_SMI_ARGS], capture_output=True, timeout=timeout,
            stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        log.warning("nvidia-smi did not answer within %.0fs", timeout)
        return []
    except OSError as exc:
        log.warning("nvidia-smi failed: %s", exc)
        return []
    if result.returncode != 0:
        return []
    return parse_nvidia_smi(result.stdout.decode(errors="replace"))
