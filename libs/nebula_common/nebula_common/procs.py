"""Process facts read from /proc: who is in a process group, and is a pid still ours.

Shared by the node agent (reaping engines a crashed node left behind) and the dev
tooling (``make down``): both must never signal a pid that was recycled by the kernel
for another program.
"""

from __future__ import annotations

import os
from pathlib import Path


def read_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces or parentheses: split after the last ")".
    return raw[raw.rfind(")") + 2:].split()


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) pids whose process group is ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        # fields[0] is the state, fields[2] the process group.
        if fields and len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            members.append(int(entry))
    return members


def cmd_matches(actual: list[str] | None, recorded: list[str]) -> bool:
    """True when a live process's argv is the one we recorded.

    A console script runs as ``<python> <script> args...`` and a bare program
    name shows as its resolved path, so: same arguments at the end, and the
    recorded program's base name among the leading words.
    """
    if not actual or not recorded:
        return False
    if actual == recorded:
        return True
    args = recorded[1:]
    if len(actual) < len(recorded) or (args and actual[-len(args):] != args):
        return False
    head = actual[: len(actual) - len(args)]
    program = os.path.basename(recorded[0])
    return any(os.path.basename(word) == program for word in head)
