"""Run-time API keys: every record under ``/keys/`` (``nebula keys``), followed from etcd.

A :class:`~nebula_common.store.PrefixMirror` lists the prefix, then watches it from the
listed revision: a key created, changed or revoked reaches :class:`~.auth.Authenticator`
as soon as etcd sends the event (well within a second). While etcd is unreachable the last
known keys stay in force (a gateway keeps serving; a revocation made meanwhile applies when
the watch resumes). A record that is not a valid key is skipped, logged and counted.
"""

from __future__ import annotations

import logging

from nebula_common.keys import Keys
from nebula_common.records import ApiKey, RecordCache
from nebula_common.store import EtcdConfig, EtcdStore, PrefixMirror
from nebula_common.tasks import TaskSet

from . import metrics
from .auth import Authenticator

log = logging.getLogger("nebula.gateway.keys")


class KeyWatch:
    def __init__(self, auth: Authenticator, etcd: EtcdConfig, keys: Keys, tasks: TaskSet):
        self.auth = auth
        self.store = EtcdStore(etcd)
        self.mirror = PrefixMirror(self.store, keys.api_keys, "api-keys", tasks)
        self.cache = RecordCache(ApiKey)
        self.mirror.subscribe(self.apply)

    def apply(self) -> None:
        records, _bad = self.cache.decode(self.mirror.items)
        before = len(self.auth.keys)
        self.auth.set_records(records.values())
        metrics.KEYS_LOADED.labels("etcd").set(sum(not r.revoked for r in records.values()))
        if len(self.auth.keys) != before:
            log.info("api keys changed", extra={"api_keys": len(self.auth.keys)})

    @property
    def synced(self) -> bool:
        return self.mirror.synced.is_set()

    def start(self) -> None:
        self.mirror.start()

    async def stop(self) -> None:
        await self.mirror.stop()
        await self.store.close()
