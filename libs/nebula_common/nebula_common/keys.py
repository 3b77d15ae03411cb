"""The etcd key schema (docs/architecture.md section 3), defined once.

An optional prefix lets several clusters or test runs share one etcd; with the
default empty prefix the keys read exactly as documented.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Builds and parses every key Nebula stores."""

    prefix: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", self.prefix.rstrip("/"))

    # prefixes (each ends with "/" so that a watch never matches a sibling)
    @property
    def models(self) -> str:
        return f"{self.prefix}/models/"

    @property
    def placements(self) -> str:
        return f"{self.prefix}/placements/"

    @property
    def nodes(self) -> str:
        return f"{self.prefix}/nodes/"

    @property
    def endpoints(self) -> str:
        return f"{self.prefix}/endpoints/"

    @property
    def stats(self) -> str:
        return f"{self.prefix}/stats/"

    @property
    def queues(self) -> str:
        """Routers' :class:`~nebula_common.records.QueueSignal`, one per router, leased."""
        return f"{self.prefix}/queues/"

    @property
    def autoscale(self) -> str:
        """The autoscaler's last decision per model (a ``ScaleDecision``), no lease."""
        return f"{self.prefix}/autoscale/"

    @property
    def cordons(self) -> str:
        return f"{self.prefix}/cordon/"

    @property
    def api_keys(self) -> str:
        """Run-time API keys (``nebula keys``), watched by every gateway."""
        return f"{self.prefix}/keys/"

    @property
    def election(self) -> str:
        return f"{self.prefix}/election/scheduler"

    # single keys
    def model(self, model_uid: str) -> str:
        return f"{self.models}{model_uid}"

    def placement(self, model_uid: str) -> str:
        return f"{self.placements}{model_uid}"

    def node(self, node_id: str) -> str:
        return f"{self.nodes}{node_id}"

    def cordon(self, node_id: str) -> str:
        """A :class:`~nebula_common.records.Cordon` while an operator drains the node; no lease."""
        return f"{self.cordons}{node_id}"

    def api_key(self, key_id: str) -> str:
        """An :class:`~nebula_common.records.ApiKey` by its id (a prefix of its sha256)."""
        return f"{self.api_keys}{key_id}"

    def scale_decision(self, model_uid: str) -> str:
        return f"{self.autoscale}{model_uid}"

    def queue(self, router_id: str) -> str:
        return f"{self.queues}{router_id}"

    def endpoint(self, model_uid: str, replica_id: str) -> str:
        return f"{self.endpoints}{model_uid}/{replica_id}"

    def endpoint_stats(self, model_uid: str, replica_id: str) -> str:
        return f"{self.stats}{model_uid}/{replica_id}"

    # parsing
    @staticmethod
    def tail(key: str, prefix: str) -> str:
        """The part of ``key`` after ``prefix`` (raises if it does not start with it)."""
        if not key.startswith(prefix):
            raise ValueError(f"key {key!r} is not under {prefix!r}")
        return key[len(prefix) :]

    def split_replica_key(self, key: str, prefix: str) -> tuple[str, str]:
        """``<prefix><model_uid>/<replica_id>`` -> (model_uid, replica_id)."""
        model_uid, _, replica_id = self.tail(key, prefix).partition("/")
        if not model_uid or not replica_id:
            raise ValueError(f"key {key!r} does not name a replica")
        return model_uid, replica_id
