"""``make down``: stop every process ``make up`` started, engines included. Harmless twice."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from devtools.cluster import REPO, stop_recorded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make down")
    parser.add_argument("--run-dir", type=Path, default=REPO / ".run",
                        help="the folder make up ran in (make up --run-dir)")
    stopped = stop_recorded(parser.parse_args(argv).run_dir)
    print(f"stopped {stopped} process group(s)" if stopped else "nothing was running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
