"""`make up ENGINE=sim` then `make down` twice, exactly as a newcomer types them.

When a seed port is taken (a `make up` of the developer's own, another program), the test
does not skip: it moves the busy services to free ports with `PORTS=` and runs in its own
`RUN_DIR=`, as the make-up error message tells a user to, and says so in a warning.
"""

from __future__ import annotations

import json
import subprocess
import warnings
from pathlib import Path

import openai

from devtools.cluster import free_port, group_alive
from devtools.up import PORTS, RUN_DIR, already_up, port_busy

REPO = Path(__file__).resolve().parents[2]


def make(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def placement(tmp_path: Path) -> tuple[dict[str, int], Path, list[str]]:
    """The ports and run folder to use, and the make variables that select them."""
    busy = [name for name, port in PORTS.items() if port_busy(port)]
    if not busy and not already_up(RUN_DIR):
        return dict(PORTS), RUN_DIR, []
    ports = {name: free_port() if name in busy else port for name, port in PORTS.items()}
    moved = " ".join(f"{name}={ports[name]}" for name in busy)
    run_dir = tmp_path / "run"
    warnings.warn(f"seed ports in use ({', '.join(busy) or 'none'}) or a cluster running in "
                  f"{RUN_DIR}: running make up PORTS=\"{moved}\" RUN_DIR={run_dir}", stacklevel=2)
    return ports, run_dir, [f"PORTS={moved}", f"RUN_DIR={run_dir}"]


def test_make_up_sim_then_down_twice(tmp_path: Path) -> None:
    ports, run_dir, where = placement(tmp_path)
    up = make("up", "ENGINE=sim", *where)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "placed: key=/placements/qwen2_5_0_5b" in up.stdout
        assert "curl" in up.stdout and "/v1/chat/completions" in up.stdout
        assert f"gateway http://127.0.0.1:{ports['gateway']}" in up.stdout
        pids = json.loads((run_dir / "pids.json").read_text())
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{ports['gateway']}/v1", api_key="x",
                               max_retries=0)
        reply = client.chat.completions.create(
            model="Qwen/Qwen2.5-0.5B-Instruct", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
        engine_groups = [json.loads(p.read_text())["pgid"]
                         for p in (run_dir / "nodes").rglob("*.pid")]
        assert engine_groups, "the node records its engine's process group"
    finally:
        down = make("down", *where[1:], timeout=120)
    assert down.returncode == 0, down.stderr
    assert not any(group_alive(pid) for pid in pids.values()), "a service survived make down"
    assert not any(group_alive(g) for g in engine_groups), "an engine survived make down"
    again = make("down", *where[1:], timeout=60)
    assert again.returncode == 0 and "nothing was running" in again.stdout
