"""A thin driver for ``docker compose`` as a user types it, for the container suites.

Everything goes through the real CLI (no Docker SDK): the tests exercise exactly the
commands the README and docs/deploy.md document. Containers are reached only through
ports published on 127.0.0.1 and through ``docker compose exec``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class ComposeError(AssertionError):
    """A compose command failed; the message carries its output."""


def docker_ready() -> str | None:
    """None when a Docker engine and the Compose v2 plugin answer, else why not."""
    if shutil.which("docker") is None:
        return "no docker CLI on PATH (make docker installs and starts an engine)"
    probe = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"no Docker engine answers: {probe.stderr.strip()[:200]} (run make docker)"
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True,
                            timeout=30)
    if plugin.returncode != 0:
        return "the Compose v2 plugin is missing (run make docker)"
    return None


def image_exists(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True,
                          timeout=30).returncode == 0


@dataclass
class Compose:
    files: Sequence[str]
    project: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def argv(self, *args: str) -> list[str]:
        cmd = ["docker", "compose"]
        if self.project:
            cmd += ["-p", self.project]
        for f in self.files:
            cmd += ["-f", f]
        return [*cmd, *args]

    def run(self, *args: str, timeout: float = 120, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.argv(*args), cwd=REPO, capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **self.env})
        if check and proc.returncode != 0:
            raise ComposeError(f"docker compose {' '.join(args)} exited {proc.returncode}:\n"
                               f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        return proc

    def up(self, *services: str, timeout: float = 300) -> None:
        self.run("up", "-d", "--wait", *services, timeout=timeout)

    def down(self) -> None:
        self.run("down", "-v", "--remove-orphans", "--timeout", "20", timeout=180, check=False)

    def ps(self) -> dict[str, dict[str, str]]:
        """Service name -> its container's state (``State``, ``Health``), stopped ones too."""
        out = self.run("ps", "-a", "--format", "json").stdout
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        return {row["Service"]: row for row in rows}

    def exec(self, service: str, *cmd: str, timeout: float = 60) -> str:
        return self.run("exec", "-T", service, *cmd, timeout=timeout).stdout

    def logs(self, *services: str) -> str:
        return self.run("logs", "--no-color", "--tail", "80", *services, check=False).stdout
