"""A role whose must-not-die task crashes stops like on SIGTERM and exits 1 with the reason.

Real processes: ``run_app`` owns the event loop, the signals and the exit code, so
only a process shows what an operator (or a supervisor like Nomad) sees.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

ROLE = textwrap.dedent("""
    import asyncio, sys
    from quart import Quart
    from nebula_common.service import run_app
    from nebula_common.tasks import TaskSet

    tasks = TaskSet("demo")

    async def keepalive() -> None:
        await asyncio.sleep(0.3)
        raise RuntimeError("lease keeper gave up:\\nno etcd")

    async def flaky() -> None:
        raise ValueError("a loop that restarts")

    async def before() -> None:
        tasks.supervise("keepalive", keepalive, restart=False)
        tasks.supervise("flaky", flaky, initial_s=0.01)

    async def after() -> None:
        print("after ran", flush=True)
        await tasks.close()

    run_app(Quart("demo"), listen="127.0.0.1:0", prog="demo-role", before=before,
            after=after, server=sys.argv[1], tasks=tasks)
    print("not reached: run_app exits non-zero", flush=True)
""")


@pytest.mark.parametrize("server", ["hypercorn", "uvicorn"])
def test_fatal_task_crash_runs_after_and_exits_1_with_one_line(server: str) -> None:
    result = subprocess.run([sys.executable, "-c", ROLE, server], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout.splitlines() == ["after ran"]
    last = result.stderr.strip().splitlines()[-1]
    assert last == ("demo-role: error: a task it cannot run without crashed: "
                    "RuntimeError: lease keeper gave up: no etcd"), result.stderr
    # The restartable loop crashed several times meanwhile without stopping anything.
    assert result.stderr.count("task demo/flaky crashed") >= 2, result.stderr


SETTLED = textwrap.dedent("""
    import asyncio, gc, os, signal
    from quart import Quart
    from nebula_common.service import run_app

    async def before() -> None:
        asyncio.get_running_loop().call_later(0.2, os.kill, os.getpid(), signal.SIGTERM)

    async def after() -> None:
        print(gc.get_threshold(), gc.get_freeze_count() > 0, flush=True)

    run_app(Quart("demo"), listen="127.0.0.1:0", prog="demo-role", before=before,
            after=after, server="uvicorn")
""")


def test_a_serving_role_freezes_its_start_up_heap_and_collects_young_objects_rarely() -> None:
    from nebula_common.service import GC_THRESHOLDS

    result = subprocess.run([sys.executable, "-c", SETTLED], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{GC_THRESHOLDS} True"]
    assert GC_THRESHOLDS[0] > 700  # Python's default: a pass every few requests
