"""The simulator engine shipped with Nebula (``nebula-sim``)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import aiohttp

from ..sim.main import build_parser
from .args import ArgPolicy
from .base import EngineAdapter, ReplicaSpec, http_ok, models_listed

_NODE_SETS = frozenset({"--host", "--port", "--listen", "--model-name", "--model",
                        "--served-model-name", "--help", "-h"})


def sim_policy() -> ArgPolicy:
    """Every flag of ``nebula-sim`` (read from its parser) but those the node sets."""
    flags = {flag for action in build_parser()._actions for flag in action.option_strings}
    return ArgPolicy("sim", frozenset(flags - _NODE_SETS))


def sim_binary() -> str:
    """``nebula-sim`` next to this interpreter (the venv), else from PATH."""
    local = Path(sys.executable).parent / "nebula-sim"
    if local.exists():
        return str(local)
    return shutil.which("nebula-sim") or "nebula-sim"


class SimAdapter(EngineAdapter):
    name = "sim"

    def __init__(self, binary: str | None = None):
        self.binary = binary or sim_binary()
        self.arg_policy = sim_policy()

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
