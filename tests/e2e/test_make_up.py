"""`make up ENGINE=sim` then `make down` twice, exactly as a newcomer types them."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import openai
import pytest

from devtools.cluster import group_alive
from devtools.up import PORTS

REPO = Path(__file__).resolve().parents[2]


def _busy(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def make(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(any(_busy(p) for p in PORTS.values()),
                    reason="a seed port is in use (is `make up` already running?)")
def test_make_up_sim_then_down_twice() -> None:
    up = make("up", "ENGINE=sim")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "placed: key=/placements/qwen2_5_0_5b" in up.stdout
        assert "curl" in up.stdout and "/v1/chat/completions" in up.stdout
        pids = json.loads((REPO / ".run" / "pids.json").read_text())
        client = openai.OpenAI(base_url="http://127.0.0.1:8081/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(
            model="Qwen/Qwen2.5-0.5B-Instruct", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
        engine_groups = [json.loads(p.read_text())["pgid"]
                         for p in (REPO / ".run" / "nodes").rglob("*.pid")]
        assert engine_groups, "the node records its engine's process group"
    finally:
        down = make("down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert not any(group_alive(pid) for pid in pids.values()), "a service survived make down"
    assert not any(group_alive(g) for g in engine_groups), "an engine survived make down"
    again = make("down", timeout=60)
    assert again.returncode == 0 and "nothing was running" in again.stdout
