"""One setup or check step of ``make``: what runs, how long it took, and only what matters.

``python3 -m devtools.step NAME --log FILE [--about TEXT] -- CMD...`` runs CMD with its output
in FILE and prints a progress line with the elapsed time every 20 s; at the end it shows the
warnings worth reading, or on failure the log's last lines, and exits with CMD's status.
Without ``--log`` CMD's output streams as usual and only the elapsed time is added.
``python3 -m devtools.step --summary FILE`` prints the times the steps recorded in FILE
(``NEBULA_STEP_TIMES``). Standard library only: it runs before the virtualenv exists.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TextIO

TIMES_ENV = "NEBULA_STEP_TIMES"
PROGRESS_EVERY_S = 20.0
FAILURE_TAIL = 60
# pip's "extra index or find-links folder missing" lines: they come from a machine's pip
# configuration (one per package and index), not from the project, and change nothing.
NOISE = re.compile(r"^WARNING: Location '[^']*' is ignored: it is neither a file nor a directory")
WORTH_READING = re.compile(r"^(WARNING|ERROR|DEPRECATION)[: ]")


def elapsed(seconds: float) -> str:
    """``7s``, ``2m10s``, ``1h02m``: short enough for a progress line."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def without_noise(lines: Iterable[str]) -> list[str]:
    return [line for line in lines if line.strip() and not NOISE.match(line)]


def worth_reading(lines: Iterable[str]) -> list[str]:
    """After a successful step: the warnings and errors a user could act on."""
    return [line for line in without_noise(lines) if WORTH_READING.search(line)]


def outcome(name: str, rc: int, seconds: float, argv: Sequence[str]) -> str:
    if rc == 0:
        return f"{name}: done in {elapsed(seconds)}"
    why = f"exit {rc}" if rc > 0 else f"killed by signal {-rc}"
    if rc == 5 and any(Path(arg).name == "pytest" for arg in argv):
        why = "exit 5: pytest collected no tests"
    return f"{name}: FAILED ({why}) after {elapsed(seconds)}"


def record(name: str, rc: int, seconds: float) -> None:
    """Append the step's time to ``$NEBULA_STEP_TIMES`` (for .ci/run's summary), if set."""
    path = os.environ.get(TIMES_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(f"{seconds:.1f}\t{rc}\t{name}\n")


def summary(lines: Iterable[str]) -> str:
    rows = []
    total = 0.0
    for line in lines:
        seconds, rc, name = line.rstrip("\n").split("\t", 2)
        total += float(seconds)
        status = "" if rc == "0" else f"  FAILED (exit {rc})"
        rows.append(f"  {elapsed(float(seconds)):>7}  {name}{status}")
    return "\n".join(["step times:", *rows, f"  {elapsed(total):>7}  total"])


def run_logged(name: str, argv: Sequence[str], log: Path, about: str, out: TextIO) -> int:
    """CMD's output to ``log``; a progress line every ``PROGRESS_EVERY_S`` meanwhile."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"{name}{f' ({about})' if about else ''} ...", file=out, flush=True)
    started = time.monotonic()
    next_line = started + PROGRESS_EVERY_S
    with open(log, "wb") as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        try:
            while proc.poll() is None:
                time.sleep(0.25)
                if time.monotonic() >= next_line:
                    print(f"  {name} ... {elapsed(time.monotonic() - started)}", file=out,
                          flush=True)
                    next_line += PROGRESS_EVERY_S
        except KeyboardInterrupt:
            proc.wait()
    rc = proc.returncode
    seconds = time.monotonic() - started
    lines = log.read_text(errors="replace").splitlines()
    if rc == 0:
        shown = worth_reading(lines)
    else:
        shown = without_noise(lines)[-FAILURE_TAIL:]
    for line in shown:
        print(f"  | {line}", file=out)
    print(outcome(name, rc, seconds, argv), file=out)
    if rc != 0:
        print(f"  the whole output is in {log}", file=out)
    out.flush()
    record(name, rc, seconds)
    return rc


def run_streamed(name: str, argv: Sequence[str], out: TextIO) -> int:
    started = time.monotonic()
    try:
        rc = subprocess.run(argv, check=False).returncode
    except KeyboardInterrupt:
        rc = 130
    seconds = time.monotonic() - started
    print(outcome(name, rc, seconds, argv), file=out, flush=True)
    record(name, rc, seconds)
    return rc


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" is the command, untouched by argparse.
    cut = words.index("--") if "--" in words else len(words)
    parser = argparse.ArgumentParser(prog="python3 -m devtools.step",
                                     usage="%(prog)s NAME [--log FILE] [--about TEXT] -- CMD...")
    parser.add_argument("name", nargs="?", help="what the step does, as the user reads it")
    parser.add_argument("--log", type=Path, help="send the command's output to this file")
    parser.add_argument("--about", default="", help="how long it usually takes, and why")
    parser.add_argument("--summary", type=Path, help="print the step times recorded here")
    args = parser.parse_args(words[:cut])
    command = words[cut + 1:]
    if args.summary is not None:
        if args.summary.exists():
            print(summary(args.summary.read_text(encoding="utf-8").splitlines()))
        return 0
    if not args.name or not command:
        parser.error("a step needs a name and a command after --")
    if args.log is not None:
        rc = run_logged(args.name, command, args.log, args.about, sys.stdout)
    else:
        rc = run_streamed(args.name, command, sys.stdout)
    return rc if rc >= 0 else 128 - rc  # a signal's death as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
