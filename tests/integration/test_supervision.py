"""The roles' long-running tasks on a real etcd: a crashed loop restarts, a fatal crash is seen.

In-process, so a crash can be injected where no outside input reaches (the loops
are written not to crash); tests/unit/common/test_service.py shows what a role
process does once its task set reports a fatal crash.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest
from opentelemetry import trace

from devtools.cluster import Cluster
from nebula_common.keys import Keys
from nebula_common.store import EtcdConfig, EtcdStore
from nebula_common.tasks import TASK_CRASHES, TaskSet
from nebula_node.agent import NodeAgent
from nebula_node.context import NodeSettings
from nebula_scheduler.election import Election
from nebula_scheduler.main import SchedulerService, build_parser
from nebula_scheduler.reconciler import Reconciler
from tests.integration.test_store import until


def crashes(task: str) -> float:
    return TASK_CRASHES.labels(task)._value.get()


async def restarted_once(tasks: TaskSet, calls: list[int], crashed_before: float,
                         passes: int, within: float) -> None:
    """``passes`` calls within ``within`` seconds, one counted crash, nothing fatal."""
    await until(lambda: len(calls) >= passes, timeout=within)
    assert crashes("reconcile") == crashed_before + 1
    assert not tasks.failed.is_set()


def count_and_crash_the_first(calls: list[int]) -> None:
    """What an injected bug does: the first pass raises, the next ones work."""
    calls.append(1)
    if len(calls) == 1:
        raise RuntimeError("a bug in one pass")


def make_agent(cluster: Cluster, tmp_path: Path) -> NodeAgent:
    settings = NodeSettings(node_id="sup1", advertise_host="127.0.0.1", state_dir=tmp_path)
    store = EtcdStore(EtcdConfig(endpoints=(cluster.etcd_endpoint,), timeout=2))
    return NodeAgent(settings, store, Keys(), lease_ttl=2, adapters={}, engines_available=[],
                     tracer=trace.get_tracer("test"), nvidia_smi="/nonexistent")


async def test_node_reconcile_loop_that_crashes_is_restarted(
        cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = make_agent(cluster, tmp_path)
    calls: list[int] = []

    monkeypatch.setattr(agent, "reconcile", lambda: count_and_crash_the_first(calls))
    before = crashes("reconcile")
    await agent.start()
    try:
        # The loop waits RESYNC_S (5 s) between passes: a second pass within 3 s is the
        # restart after the crash (0.5 s backoff), not the next periodic pass.
        await restarted_once(agent.tasks, calls, before, passes=2, within=3)
    finally:
        await agent.shutdown(timeout=5)


async def test_node_lease_keepalive_crash_is_fatal(
        cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = make_agent(cluster, tmp_path)

    async def keepalive() -> None:
        raise RuntimeError("keepalive bug")

    monkeypatch.setattr(agent.lease, "_keepalive", keepalive)
    await agent.start()
    try:
        await asyncio.wait_for(agent.tasks.failed.wait(), 10)
        assert str(agent.tasks.error) == "keepalive bug"
    finally:
        await agent.shutdown(timeout=5)


def scheduler_args(cluster: Cluster) -> argparse.Namespace:
    return build_parser().parse_args(["--etcd-endpoints", cluster.etcd_endpoint,
                                      "--lease-ttl", "2", "--etcd-wait", "5"])


async def test_scheduler_reconcile_crash_restarts_and_election_crash_is_fatal(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    passes: list[int] = []
    original = Reconciler.reconcile_once

    async def reconcile_once(self: Reconciler) -> object:
        count_and_crash_the_first(passes)
        return await original(self)

    monkeypatch.setattr(Reconciler, "reconcile_once", reconcile_once)
    service = SchedulerService(scheduler_args(cluster), Keys())
    before = crashes("reconcile")
    await service.start()
    try:
        await restarted_once(service.tasks, passes, before, passes=3, within=10)
        assert service.reconciler is not None and service.reconciler.passes >= 1
    finally:
        await service.close()

    async def election_run(self: Election, stop: asyncio.Event) -> None:
        raise RuntimeError("election bug")

    monkeypatch.setattr(Election, "run", election_run)
    service = SchedulerService(scheduler_args(cluster), Keys())
    await service.start()
    try:
        await asyncio.wait_for(service.tasks.failed.wait(), 10)
        assert str(service.tasks.error) == "election bug"
    finally:
        await service.close()
