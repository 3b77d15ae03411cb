"""An earlier commit's router and gateway, run beside this code in the same bench rounds.

Issue 17 asks for the CPU per forwarded chunk cut at least in half on both hops: a before
and an after. The "before" is the code the issue was filed against (:data:`ISSUE17_BASELINE`,
Quart on Hypercorn, aiohttp to the upstream), so ``make bench-peers`` exports that commit's
``libs/nebula_common`` and both services with ``git archive`` and starts them from this venv
with the export first on ``PYTHONPATH``: the same machine, etcd, stand-ins and rounds, so the
ratio is measured side by side and never against an old number. It needs the commit in the
clone's history (a shallow clone lacks it: ``git fetch --unshallow``).
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

from devtools.cluster import REPO

ISSUE17_BASELINE = "8be8cc5"
"""The last commit before issue 17's first change (4706a83): the request path it measured."""

PACKAGES = {"libs/nebula_common": "nebula_common", "services/router": "nebula_router",
            "services/gateway": "nebula_gateway"}
"""What the router and the gateway import: tree (relative to the repository root) -> the
package directly under it."""


class BaselineError(Exception):
    """The commit could not be exported (unknown to this clone, or not a Nebula tree)."""


def export(rev: str, dest: Path, repo: Path = REPO) -> dict[str, str]:
    """``rev``'s :data:`PACKAGES` trees under ``dest``; the environment that runs their code.

    The returned ``PYTHONPATH`` puts the export before this venv's editable installs, so
    ``nebula-router`` and ``nebula-gateway`` import the old packages.
    """
    try:
        archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", rev,
                                  *PACKAGES], capture_output=True, check=True).stdout
    except subprocess.CalledProcessError as exc:
        why = exc.stderr.decode(errors="replace").strip().splitlines()
        raise BaselineError(f"git archive {rev}: {why[-1] if why else 'failed'} "
                            "(a shallow clone lacks it: git fetch --unshallow)") from None
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    for tree, package in PACKAGES.items():
        if not (dest / tree / package / "__init__.py").is_file():
            raise BaselineError(f"{rev} has no {package} package under {tree}")
    return {"PYTHONPATH": os.pathsep.join(str(dest / tree) for tree in PACKAGES)}
