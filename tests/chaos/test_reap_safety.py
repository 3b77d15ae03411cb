"""Teardown must never signal a process group that is no longer the one a pid file names.

pid_max is 32768 on the CI box and the suites start thousands of processes, so
pgids are recycled within minutes. A pid file left by a killed node (the chaos
and node suites kill nodes on purpose) can name a pgid that now belongs to
another suite's process. devtools' reap_pidfiles (every Cluster.stop_all and
``make down``) must check, as the node's own reaper does, that the group's leader
still runs the recorded command before signalling it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from devtools.cluster import reap_pidfiles, wait_for


def stranger() -> subprocess.Popen[bytes]:
    """An unrelated program in its own process group (pgid == its pid), exec'd already."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            start_new_session=True)
    wait_for(lambda: b"time.sleep" in Path(f"/proc/{proc.pid}/cmdline").read_bytes(), 10,
             "the stranger runs its own program")
    return proc


def stale_pidfile(run_dir: Path, pgid: int) -> Path:
    """What a killed node leaves: a pid file for an engine that is long gone."""
    path = run_dir / "nodes" / "n1" / "engines" / "m__r0.pid"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"pgid": pgid, "pid": pgid, "port": 1,
                                "cmd": ["/venv/bin/nebula-sim", "--port", "1"]}))
    return path


def test_devtools_reap_leaves_a_recycled_pgid_alone(tmp_path: Path) -> None:
    """devtools.cluster.reap_pidfiles must check the recorded cmd, as the node's reaper does."""
    proc = stranger()
    try:
        stale_pidfile(tmp_path, proc.pid)
        reap_pidfiles(tmp_path)
        assert proc.poll() is None, (
            "reap_pidfiles signalled a process group whose leader runs another program than "
            "the pid file's cmd (a recycled pgid)")
    finally:
        proc.kill()
        proc.wait()
