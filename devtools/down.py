"""``make down``: stop every process ``make up`` started, engines included. Harmless twice."""

from __future__ import annotations

import sys

from devtools.cluster import REPO, stop_recorded


def main() -> int:
    stopped = stop_recorded(REPO / ".run")
    print(f"stopped {stopped} process group(s)" if stopped else "nothing was running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
