"""The queue signal: this router's queues, aggregated, to etcd at most once a second.

The scheduler's autoscaler reads ``/queues/<router_id>`` (a
:class:`~nebula_common.records.QueueSignal` under this router's lease, so it vanishes with
the router): one record per router, written when it changed and never per request.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nebula_common.keys import Keys
from nebula_common.records import ModelQueueLoad, QueueSignal
from nebula_common.store import LeaseKeeper

from .gate import Admission

log = logging.getLogger(__name__)


def queue_signal(admission: Admission, router_id: str, now: float, wall: float
                 ) -> QueueSignal:
    """The record for ``admission``'s state now (pure: ``now`` monotonic, ``wall`` epoch)."""
    models = {}
    for uid, gate in admission.gates.items():
        # Idle models stay in (bounded by the models asked for): idleness is a signal too.
        oldest = max(gate.queue.oldest_wait(c, now) for c in range(len(gate.queue.fair)))
        models[uid] = ModelQueueLoad(waiting=len(gate.queue), admitted=gate.admitted,
                                     oldest_wait_s=round(oldest, 1),
                                     max_running_per_replica=admission.per_replica(gate))
    return QueueSignal(router_id=router_id, models=models, updated_at=wall)


class SignalPublisher:
    """Writes this router's :class:`QueueSignal` when it changed, at most every ``interval``."""

    def __init__(self, admission: Admission, lease: LeaseKeeper, keys: Keys, router_id: str,
                 interval: float = 1.0):
        self.admission = admission
        self.lease = lease
        self.key = keys.queue(router_id)
        self.router_id = router_id
        self.interval = interval
        self._last: dict[str, ModelQueueLoad] | None = None

    async def run(self) -> None:
        if not self.lease.lease_id:
            await self.lease.start()
        while True:
            signal = queue_signal(self.admission, self.router_id, time.monotonic(), time.time())
            if signal.models != self._last:
                if await self.lease.put(self.key, signal.to_json()):
                    self._last = signal.models
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        """Revoke the lease: the signal disappears at once, not after the TTL."""
        if self.lease.lease_id:
            await self.lease.stop(revoke=True)
