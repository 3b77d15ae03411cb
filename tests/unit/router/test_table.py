"""Building the endpoint table from mirrored etcd records (pure)."""

from __future__ import annotations

from nebula_common.keys import Keys
from nebula_common.records import Assignment, Endpoint, EndpointStats, PlacementPlan
from nebula_router.table import EndpointTable, build_index

K = Keys("/t")


def ep(uid: str, rid: str, status: str = "ready", name: str = "Org/Model") -> tuple[str, bytes]:
    return K.endpoint(uid, rid), Endpoint(uid, name, rid, "n1", f"http://h/{rid}/", "sim",
                                          status=status).to_json()


def test_lookup_by_name_and_uid_with_stats() -> None:
    endpoints = dict([ep("m1", "0"), ep("m1", "1", status="draining")])
    stats = {K.endpoint_stats("m1", "0"): EndpointStats(running=2, waiting=3).to_json()}
    lookup, replicas = build_index(K, endpoints, stats, {})
    entry = lookup["m1"]
    assert lookup["Org/Model"] is entry
    assert [c.replica_id for c in entry.candidates] == ["0", "1"]
    assert entry.ready_replicas == 1
    c0 = replicas[("m1", "0")]
    assert (c0.running, c0.waiting, c0.base_url) == (2.0, 3.0, "http://h/0")
    assert replicas[("m1", "1")].status == "draining"


def test_local_state_survives_rebuild_and_removed_replicas_drop() -> None:
    endpoints = dict([ep("m1", "0"), ep("m1", "1")])
    _, replicas = build_index(K, endpoints, {}, {})
    replicas[("m1", "0")].in_flight = 4
    replicas[("m1", "0")].failures = 2
    del endpoints[K.endpoint("m1", "1")]
    lookup, again = build_index(K, endpoints, {}, {}, replicas)
    assert again[("m1", "0")] is replicas[("m1", "0")]
    assert again[("m1", "0")].in_flight == 4 and again[("m1", "0")].failures == 2
    assert ("m1", "1") not in again
    assert [c.replica_id for c in lookup["m1"].candidates] == ["0"]


def test_placed_model_without_endpoints_is_known() -> None:
    plan = PlacementPlan("m2", "Org/Other", "vllm",
                         assignments=[Assignment("0", "n1", 10814)])
    lookup, _ = build_index(K, {}, {}, {K.placement("m2"): plan.to_json()})
    assert lookup["Org/Other"].placed and lookup["m2"].candidates == []
    assert lookup["m2"].engine == "vllm"


def test_bad_records_and_keys_are_ignored() -> None:
    endpoints = {K.endpoint("m1", "0"): b"{not json", K.endpoints + "junk": b"{}",
                 **dict([ep("m1", "1")])}
    _, replicas = build_index(K, endpoints, {K.endpoint_stats("m1", "1"): b"[]"}, {})
    assert list(replicas) == [("m1", "1")]
    assert replicas[("m1", "1")].waiting == 0


def test_uid_wins_over_another_models_name() -> None:
    endpoints = dict([ep("a", "0", name="b"), ep("b", "0", name="B")])
    lookup, _ = build_index(K, endpoints, {}, {})
    assert lookup["b"].model_uid == "b"


def test_table_without_etcd_is_not_ready() -> None:
    table = EndpointTable(None, K)
    ok, why = table.readiness()
    assert not ok and "never synced" in why
    table.load(dict([ep("m1", "0")]), {}, {})
    assert table.get("m1") is not None and table.models()[0].model_uid == "m1"


def test_decode_cache_parses_each_value_once() -> None:
    from nebula_router.table import DecodeCache

    calls = []

    class Counting(EndpointStats):
        @classmethod
        def from_json(cls, raw):  # type: ignore[no-untyped-def,override]
            calls.append(raw)
            return super().from_json(raw)

    cache = DecodeCache()
    raw = EndpointStats(running=1).to_json()
    first = cache(raw, Counting, "/k")
    assert cache(raw, Counting, "/k") is first and len(calls) == 1
    cache(EndpointStats(running=2).to_json(), Counting, "/k")
    assert len(calls) == 2
    cache.prune(set())
    cache(raw, Counting, "/k")
    assert len(calls) == 3
