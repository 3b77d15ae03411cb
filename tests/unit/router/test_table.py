"""Building the endpoint table from mirrored etcd records (pure, and through the caches)."""

from __future__ import annotations

import pytest

from nebula_common.keys import Keys
from nebula_common.records import (
    INVALID_RECORDS,
    Assignment,
    Endpoint,
    EndpointStats,
    NodeStatus,
    PlacementPlan,
)
from nebula_router.table import (
    EndpointTable,
    build_index,
    debug_rows,
    endpoint_refusal,
    screen_endpoints,
)

K = Keys("/t")
NODES = {K.node("n1"): NodeStatus("n1", "h").to_json()}


def ep(uid: str, rid: str, status: str = "ready", name: str = "Org/Model") -> tuple[str, bytes]:
    return K.endpoint(uid, rid), endpoint(uid, rid, status, name).to_json()


def endpoint(uid: str, rid: str, status: str = "ready", name: str = "Org/Model") -> Endpoint:
    return Endpoint(uid, name, rid, "n1", f"http://h:{8000 + int(rid)}/", "sim", status=status)


def loaded(endpoints: dict[str, bytes], stats: dict[str, bytes] | None = None,
           placements: dict[str, bytes] | None = None) -> EndpointTable:
    table = EndpointTable(None, K)
    table.load(endpoints, stats or {}, placements or {}, NODES)
    return table


def invalid(kind: str) -> float:
    """``nebula_*_records_invalid_total{kind}`` as the shared decoder counts it."""
    for metric in INVALID_RECORDS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels == {"kind": kind}:
                return sample.value
    return 0.0


def test_lookup_by_name_and_uid_with_stats() -> None:
    table = loaded(dict([ep("m1", "0"), ep("m1", "1", status="draining")]),
                   {K.endpoint_stats("m1", "0"): EndpointStats(running=2, waiting=3).to_json()})
    entry = table.lookup["m1"]
    assert table.lookup["Org/Model"] is entry
    assert [c.replica_id for c in entry.candidates] == ["0", "1"]
    assert entry.ready_replicas == 1
    c0 = table.replicas[("m1", "0")]
    assert (c0.running, c0.waiting, c0.base_url) == (2.0, 3.0, "http://h:8000")
    assert table.replicas[("m1", "1")].status == "draining"


def test_local_state_survives_rebuild_and_removed_replicas_drop() -> None:
    endpoints = {K.endpoint("m1", r): endpoint("m1", r) for r in ("0", "1")}
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
    lookup, _ = build_index(K, {}, {}, {K.placement("m2"): plan})
    assert lookup["Org/Other"].placed and lookup["m2"].candidates == []
    assert lookup["m2"].engine == "vllm"


def test_bad_records_and_keys_are_skipped_and_counted_once() -> None:
    before = invalid("Endpoint"), invalid("EndpointStats")
    endpoints = {K.endpoint("m1", "0"): b"{not json", K.endpoints + "junk": endpoint("x", "0")
                 .to_json(), **dict([ep("m1", "1")])}
    stats = {K.endpoint_stats("m1", "1"): b"[]"}
    table = loaded(endpoints, stats)
    assert list(table.replicas) == [("m1", "1")]
    assert table.replicas[("m1", "1")].waiting == 0
    assert (invalid("Endpoint"), invalid("EndpointStats")) == (before[0] + 1, before[1] + 1)
    table.load(endpoints, stats, {}, NODES)  # unchanged values: not decoded (nor counted) again
    assert (invalid("Endpoint"), invalid("EndpointStats")) == (before[0] + 1, before[1] + 1)


def test_uid_wins_over_another_models_name() -> None:
    lookup = loaded(dict([ep("a", "0", name="b"), ep("b", "0", name="B")])).lookup
    assert lookup["b"].model_uid == "b"


def test_table_without_etcd_is_not_ready() -> None:
    table = EndpointTable(None, K)
    ok, why = table.readiness()
    assert not ok and "never synced" in why
    table.load(dict([ep("m1", "0")]), {}, {}, NODES)
    assert table.get("m1") is not None and table.models()[0].model_uid == "m1"


def test_rebuild_decodes_only_changed_values(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes | str] = []
    decode = EndpointStats.from_json.__func__  # type: ignore[attr-defined]

    def counting(cls: type[EndpointStats], raw: bytes | str) -> EndpointStats:
        calls.append(raw)
        return decode(cls, raw)  # type: ignore[no-any-return]

    monkeypatch.setattr(EndpointStats, "from_json", classmethod(counting))
    table = EndpointTable(None, K)
    key, raw = K.endpoint_stats("m1", "0"), EndpointStats(running=1).to_json()
    for _ in range(3):
        table.load(dict([ep("m1", "0")]), {key: raw}, {}, NODES)
    assert calls == [raw] and table.rebuilds == 3
    table.load(dict([ep("m1", "0")]), {key: EndpointStats(running=5).to_json()}, {}, NODES)
    assert len(calls) == 2 and table.replicas[("m1", "0")].running == 5.0


# -- trust: an endpoint must be a plain URL on its node's advertise host --------------------
def at(base_url: str, node_id: str = "n1") -> Endpoint:
    return Endpoint("m", "Org/Model", "0", node_id, base_url, "sim")


NODE = NodeStatus("n1", "h")


@pytest.mark.parametrize("url", ["http://h:8000", "http://h:8000/", "https://H:8443"])
def test_a_plain_url_on_the_nodes_advertise_host_is_accepted(url: str) -> None:
    assert endpoint_refusal(at(url), NODE) == ""


@pytest.mark.parametrize(("url", "why"), [
    ("http://h:8000/v1", "path"),
    ("http://h:8000/?x=1", "query"),
    ("http://h:8000#top", "fragment"),
    ("http://user:pw@h:8000", "credentials"),
    ("http://h", "host:port"),
    ("http://h:99999", "not a URL"),
    ("ftp://h:21", "scheme"),
    ("unix:///run/engine.sock", "scheme"),
    ("http://169.254.169.254:80", "advertise host"),
    ("http://h.evil.example:8000", "advertise host"),
])
def test_an_endpoint_url_that_is_not_a_plain_url_on_that_host_is_refused(url: str,
                                                                          why: str) -> None:
    assert why in endpoint_refusal(at(url), NODE)


def test_an_endpoint_of_a_node_that_is_not_registered_is_refused() -> None:
    assert "not live" in endpoint_refusal(at("http://h:8000", "ghost"), None)
    accepted, refused = screen_endpoints(K, {"a": at("http://h:1"), "b": at("http://h:2", "x")},
                                         {K.node("n1"): NODE})
    assert list(accepted) == ["a"] and list(refused) == ["b"]


def test_refused_endpoints_are_skipped_logged_counted_once_and_shown(
        caplog: pytest.LogCaptureFixture) -> None:
    before = invalid("Endpoint")
    endpoints = {K.endpoint("m1", "0"): endpoint("m1", "0").to_json(),
                 K.endpoint("m2", "0"): Endpoint("m2", "Evil", "0", "n1", "http://attacker:80",
                                                 "sim").to_json()}
    with caplog.at_level("WARNING"):
        table = loaded(endpoints)
        table.load(endpoints, {}, {}, NODES)  # unchanged: not logged nor counted again
    assert list(table.replicas) == [("m1", "0")] and table.get("Evil") is None
    assert invalid("Endpoint") == before + 1
    assert [r.getMessage() for r in caplog.records if "refusing" in r.getMessage()] == [
        f"refusing endpoint at {K.endpoint('m2', '0')}: base_url host 'attacker' is not "
        "the advertise host of node 'n1' ('h')"]
    rows = {r["model_uid"]: r for r in debug_rows(table, 0.0, lambda c, now: "closed")}
    assert rows["m2"]["status"] == "refused" and "advertise host" in str(rows["m2"]["reason"])
    assert rows["m1"]["status"] == "ready" and set(rows["m1"]) == set(rows["m2"])
    # The node now advertises that address: the same record is routed to, the other is not.
    table.load(endpoints, {}, {}, {K.node("n1"): NodeStatus("n1", "attacker").to_json()})
    assert table.get("Evil") is not None and list(table.refused) == [K.endpoint("m1", "0")]


def test_an_endpoint_outlives_a_blink_of_its_nodes_record() -> None:
    """A lease re-grant puts a node's keys one by one: while its /nodes/ record is missing
    its endpoints keep being screened against the advertise host last seen."""
    endpoints = {K.endpoint("m1", "0"): endpoint("m1", "0").to_json()}
    table = loaded(endpoints)
    assert list(table.replicas) == [("m1", "0")]
    table.load(endpoints, {}, {}, {})  # the node's record is gone for a moment
    assert list(table.replicas) == [("m1", "0")] and not table.refused
    # A node never seen is still refused: the memory only bridges records it has had.
    ghost = {K.endpoint("m2", "0"): Endpoint("m2", "G", "0", "ghost", "http://h:1",
                                             "sim").to_json()}
    table.load({**endpoints, **ghost}, {}, {}, {})
    assert list(table.refused) == [K.endpoint("m2", "0")]


def test_a_model_lists_what_all_its_ready_replicas_declared() -> None:
    from nebula_router.app import model_item

    def declared(rid: str, caps: list[str], status: str = "ready") -> tuple[str, bytes]:
        record = endpoint("m1", rid, status)
        record.capabilities = caps
        return K.endpoint("m1", rid), record.to_json()

    table = loaded(dict([declared("0", ["chat", "embeddings"]), declared("1", ["chat"]),
                         declared("2", [], status="ready"),  # an older node: says nothing
                         declared("3", ["completions"], status="draining")]))
    assert model_item(table.lookup["m1"])["nebula"]["capabilities"] == ["chat"]
    bare = loaded(dict([ep("m2", "0")]))
    assert "capabilities" not in model_item(bare.lookup["m2"])["nebula"]
