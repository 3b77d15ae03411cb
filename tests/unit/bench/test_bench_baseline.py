"""An earlier commit's router and gateway exported for the bench (bench/baseline.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.baseline import BaselineError, export


def test_the_export_is_what_the_roles_import(tmp_path: Path) -> None:
    env = export("HEAD", tmp_path / "base")
    code = ("import nebula_common, nebula_router.main, nebula_gateway.main; "
            "print(nebula_common.__file__, nebula_router.main.__file__, "
            "nebula_gateway.main.__file__)")
    out = subprocess.run([sys.executable, "-c", code], env={**env, "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert len(out) == 3
    assert all(Path(f).is_relative_to(tmp_path / "base") for f in out), out


def test_a_commit_this_clone_lacks_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BaselineError) as caught:
        export("0" * 40, tmp_path / "base")
    message = str(caught.value)
    assert "\n" not in message and "0" * 40 in message and "unshallow" in message
    assert not (tmp_path / "base").exists()  # nothing half-written
