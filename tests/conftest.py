"""Fixtures shared by every suite: a real etcd and a cluster launcher per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.cluster import Cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A running etcd on a free loopback port; processes started on it are stopped after."""
    c = Cluster(tmp_path / "run")
    c.start_etcd()
    try:
        yield c
    finally:
        c.stop_all(grace=5)
