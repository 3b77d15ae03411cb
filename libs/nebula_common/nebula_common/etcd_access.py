"""Who may read and write what in etcd: one user and role per Nebula role, least privilege.

etcd holds the cluster's truth (an engine's command line, an upstream URL), so with auth on
each role gets only the key ranges it needs (docs/security.md):

* router: reads placements, endpoints, stats and nodes; writes its queue signal (queues);
* node: reads placements, models and cordons; writes nodes, endpoints and stats;
* scheduler (and the operator CLI run inside its container): writes models, placements,
  cordons, API keys, autoscale decisions and the election key; reads nodes, endpoints,
  stats and queues;
* gateway: reads API keys (``--watch-keys``); writes nothing.

This module is the table (pure); applying it to a cluster
is ``nebula-etcd-auth`` (``nebula_scheduler.etcd_auth``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from .keys import Keys


class Perm(IntEnum):
    """etcd's ``authpb.Permission.Type`` values."""

    READ = 0
    WRITE = 1
    READWRITE = 2


@dataclass(frozen=True, slots=True)
class Grant:
    """A permission on every key under ``key`` when it ends with ``/``, else on that key."""

    key: str
    perm: Perm

    @property
    def range_end(self) -> bytes:
        """etcd's half-open range end: the prefix with its last byte plus one, or empty for
        one key (every Nebula prefix ends with ``/``, so the increment never overflows)."""
        raw = self.key.encode()
        if not raw.endswith(b"/"):
            return b""
        return raw[:-1] + bytes([raw[-1] + 1])


ROUTER, NODE, SCHEDULER = "nebula-router", "nebula-node", "nebula-scheduler"
GATEWAY = "nebula-gateway"
ROLES = (ROUTER, NODE, SCHEDULER, GATEWAY)


def election_prefix(keys: Keys) -> str:
    """The election key's folder: the election watches its key as a prefix."""
    return keys.election.rpartition("/")[0] + "/"


def grants(keys: Keys) -> dict[str, tuple[Grant, ...]]:
    """The permissions of each role's etcd user, for one key prefix."""
    read, write = Perm.READ, Perm.READWRITE
    return {
        ROUTER: (Grant(keys.placements, read), Grant(keys.endpoints, read),
                 Grant(keys.stats, read), Grant(keys.nodes, read),
                 Grant(keys.queues, write)),
        NODE: (Grant(keys.placements, read), Grant(keys.models, read),
               Grant(keys.cordons, read), Grant(keys.nodes, write),
               Grant(keys.endpoints, write), Grant(keys.stats, write)),
        SCHEDULER: (Grant(keys.models, write), Grant(keys.placements, write),
                    Grant(keys.cordons, write), Grant(election_prefix(keys), write),
                    Grant(keys.api_keys, write), Grant(keys.autoscale, write),
                    Grant(keys.nodes, read), Grant(keys.endpoints, read),
                    Grant(keys.stats, read), Grant(keys.queues, read)),
        GATEWAY: (Grant(keys.api_keys, read),),
    }
