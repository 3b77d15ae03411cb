"""Fixtures shared by every suite: a real etcd and a cluster launcher per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.cluster import Cluster
from devtools.step import TIMES_ENV

# .ci/run collects make test's step times through this file name; a step a test runs
# (devtools.step's own tests, `make up` in tests/e2e) must not add a row to CI's table.
os.environ.pop(TIMES_ENV, None)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A running etcd on a free loopback port; processes started on it are stopped after."""
    c = Cluster(tmp_path / "run")
    c.start_etcd()
    try:
        yield c
    finally:
        c.stop_all(grace=5)
