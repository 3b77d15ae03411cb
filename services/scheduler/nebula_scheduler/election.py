"""Leader election on ``/election/scheduler``, backed by the process's lease.

Campaign = a transaction that creates the key only if it is absent, under our
lease. The winner leads until its lease goes (death, partition): etcd deletes
the key, every follower's watch sees it and campaigns again, so handover takes
at most the lease TTL. The election key is deliberately *not* put through
:meth:`LeaseKeeper.put`: a re-granted lease would re-put it unconditionally and
steal leadership from whoever won in between.

Leadership as this process believes it is only a hint (a process paused past
its lease believes it still leads until it runs again and notices): every plan
write is fenced with :meth:`Election.fence`, which etcd checks in the write's own
transaction.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

from nebula_common.keys import Keys
from nebula_common.store import EtcdStore, Fence, LeaseKeeper, PrefixMirror
from nebula_common.tasks import TaskSet

from . import metrics

log = logging.getLogger(__name__)


def make_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Election:
    """Campaign, watch, and tell whether this process leads right now."""

    def __init__(self, store: EtcdStore, keys: Keys, keeper: LeaseKeeper,
                 identity: str | None = None, retry_interval: float = 1.0,
                 tasks: TaskSet | None = None):
        self.store = store
        self.key = keys.election
        self.keeper = keeper
        self.identity = (identity or make_identity()).encode()
        self.retry_interval = retry_interval
        self.mirror = PrefixMirror(store, self.key, "election", tasks)
        self._won_lease = 0
        self._seen_own = False
        self._wake = asyncio.Event()
        self._was_leader = False

    @property
    def leader(self) -> bool:
        """True while we hold the key under our current, alive lease."""
        if not self._won_lease or not self.keeper.alive:
            return False
        if self._won_lease != self.keeper.lease_id:
            return False  # the lease we won with is gone; so is the key
        return True

    def fence(self) -> Fence | None:
        """What a plan write must find in etcd: our identity in the key, under the lease
        we won it with. None while we do not lead."""
        if not self.leader:
            return None
        return Fence(self.key, self.identity, self._won_lease)

    @property
    def current_leader(self) -> str:
        raw = self.mirror.items.get(self.key)
        return raw.decode(errors="replace") if raw else ""

    def _on_change(self) -> None:
        value = self.mirror.items.get(self.key)
        if value == self.identity:
            self._seen_own = True
        elif self._won_lease and self._seen_own:
            # Our key was deleted or replaced: we no longer lead.
            self._step_down("election key no longer ours")
        self._refresh_metric()
        self._wake.set()

    def _step_down(self, why: str) -> None:
        if self._won_lease:
            (log.info if why == "resigned" else log.warning)(
                "lost scheduler leadership: %s", why)
        self._won_lease = 0
        self._seen_own = False

    def _refresh_metric(self) -> None:
        leading = self.leader
        metrics.LEADER.set(1 if leading else 0)
        if leading != self._was_leader:
            self._was_leader = leading
            if leading:
                log.info("became scheduler leader identity=%s", self.identity.decode())

    async def campaign(self) -> bool:
        """Try once to take the key; True when we won (or already held it)."""
        if self.leader:
            return True
        lease = self.keeper.lease_id
        if not lease or not self.keeper.alive:
            return False
        won = await self.store.put_if_revision(self.key, self.identity, 0, lease=lease)
        if won:
            self._won_lease = lease
            self._seen_own = False
        self._refresh_metric()
        return won

    async def _adopt(self) -> None:
        """The key is ours but we did not hear the campaign's answer (a lost reply)."""
        current = await self.store.get(self.key)
        lease = self.keeper.lease_id
        if current is not None and current.value == self.identity and current.lease == lease:
            self._won_lease = lease
            self._seen_own = True
        self._refresh_metric()

    async def run(self, stop: asyncio.Event) -> None:
        """Campaign whenever the key is absent; notice losing the lease."""
        self.mirror.subscribe(self._on_change)
        self.mirror.start()
        try:
            while not stop.is_set():
                if self._won_lease and self._won_lease != self.keeper.lease_id:
                    self._step_down("lease lost")
                try:
                    if not self.leader and (self.key not in self.mirror.items
                                            or not self.mirror.synced.is_set()):
                        await self.campaign()
                    elif not self.leader and self.mirror.items.get(self.key) == self.identity:
                        await self._adopt()
                except Exception as exc:  # etcd down: try again later
                    log.debug("campaign failed: %s", exc)
                self._refresh_metric()
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.retry_interval)
                except TimeoutError:
                    pass
        finally:
            await self.mirror.stop()

    async def resign(self) -> None:
        """Give the key up now (clean shutdown) so a follower takes over at once."""
        if self.leader:
            try:
                current = await self.store.get(self.key)
                if current is not None and current.value == self.identity:
                    await self.store.delete_if_revision(self.key, current.mod_revision)
            except Exception as exc:  # the lease TTL removes it anyway
                log.debug("resign failed: %s", exc)
        self._step_down("resigned")
        self._refresh_metric()
