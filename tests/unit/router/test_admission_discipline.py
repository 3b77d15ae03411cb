"""The admission queue's discipline: priority order, aging, fair share, caps, removal."""

from __future__ import annotations

from collections import Counter

import pytest

from nebula_router.admission import CLASSES, ModelQueue, QueueConfig, class_of

INTERACTIVE, DEFAULT, BATCH = 0, 1, 2


def q(max_queue: int = 100, aging_s: float = 0.0) -> ModelQueue[str]:
    return ModelQueue(QueueConfig(max_queue, (1.0, 2.0, 3.0), aging_s))


def drain(queue: ModelQueue[str], now: float = 0.0) -> list[str]:
    out = []
    while (w := queue.pop(now)) is not None:
        out.append(w.item)
    return out


def test_class_of_header_values() -> None:
    assert [class_of(v) for v in ("interactive", "Batch ", "default")] == [0, 2, 1]
    assert class_of(None) == class_of("") == class_of("urgent") == DEFAULT
    assert CLASSES == ("interactive", "default", "batch")


def test_strict_priority_between_classes() -> None:
    queue = q()
    queue.push("b1", "t", BATCH, 0.0)
    queue.push("d1", "t", DEFAULT, 0.1)
    queue.push("i1", "t", INTERACTIVE, 0.2)
    queue.push("b2", "t", BATCH, 0.3)
    queue.push("i2", "t", INTERACTIVE, 0.4)
    assert drain(queue, 1.0) == ["i1", "i2", "d1", "b1", "b2"]
    assert len(queue) == 0


def test_aging_lifts_a_starved_batch_request() -> None:
    queue = q(aging_s=5.0)
    queue.push("b-old", "t", BATCH, 0.0)
    for i in range(3):
        queue.push(f"i{i}", "t", INTERACTIVE, 9.0)
    # At 6 s the batch request competes as default: still behind interactive.
    assert queue.pop(6.0).item == "i0"  # type: ignore[union-attr]
    # At 10 s it has aged two classes: it goes before the waiting interactive ones.
    assert queue.pop(10.0).item == "b-old"  # type: ignore[union-attr]
    assert drain(queue, 10.0) == ["i1", "i2"]


def test_aged_requests_go_oldest_first_ahead_of_the_class_own() -> None:
    queue = q(aging_s=5.0)
    queue.push("d", "t", DEFAULT, 1.0)
    queue.push("b", "t", BATCH, 0.0)
    queue.push("i", "t", INTERACTIVE, 5.5)
    # At 6.5 s both lower ones aged one step (default -> interactive, batch -> default).
    assert drain(queue, 6.5) == ["d", "i", "b"]


def test_no_aging_when_off() -> None:
    queue = q(aging_s=0.0)
    queue.push("b", "t", BATCH, 0.0)
    queue.push("i", "t", INTERACTIVE, 1000.0)
    assert drain(queue, 10_000.0) == ["i", "b"]


def test_fair_share_between_a_heavy_and_light_tenants() -> None:
    queue = q(max_queue=1000)
    for i in range(100):
        queue.push(f"heavy{i}", "heavy", DEFAULT, 0.0)
    for i in range(10):
        queue.push(f"a{i}", "a", DEFAULT, 0.1)
        queue.push(f"b{i}", "b", DEFAULT, 0.1)
    first = drain(queue)[:30]
    # While all three have requests waiting, each gets a third of the dispatches.
    counts = Counter(x.rstrip("0123456789") for x in first)
    assert counts == {"heavy": 10, "a": 10, "b": 10}


def test_idle_tenant_saves_no_credit() -> None:
    queue = q()
    for i in range(4):
        queue.push(f"h{i}", "heavy", DEFAULT, 0.0)
    assert [queue.pop(0.0).item for _ in range(3)] == ["h0", "h1", "h2"]  # type: ignore
    # A newcomer starts at the class clock: it alternates, it does not jump a whole round.
    for i in range(3):
        queue.push(f"n{i}", "new", DEFAULT, 1.0)
        queue.push(f"h{4 + i}", "heavy", DEFAULT, 1.0)
    order = drain(queue)
    assert order[:2] in (["h3", "n0"], ["n0", "h3"])
    assert order.count("n0") == 1 and len(order) == 7
    positions = [i for i, x in enumerate(order) if x.startswith("n")]
    assert positions[-1] - positions[0] <= 4  # interleaved, not all at the end


def test_length_cap() -> None:
    queue = q(max_queue=2)
    assert queue.push("1", "t", INTERACTIVE, 0.0)[0] is not None
    assert queue.push("2", "t", INTERACTIVE, 0.0)[0] is not None
    assert queue.push("3", "t", INTERACTIVE, 0.0) == (None, None)
    assert len(queue) == 2


def test_full_queue_pushes_out_a_lower_class_newest_first() -> None:
    queue = q(max_queue=3)
    queue.push("b-old", "x", BATCH, 0.0)
    queue.push("b-new", "x", BATCH, 1.0)
    queue.push("d", "y", DEFAULT, 1.0)
    w, out = queue.push("i", "z", INTERACTIVE, 2.0)
    assert w is not None and out is not None and out.item == "b-new"
    assert len(queue) == 3 and not out.queued
    # The newcomer of the lowest class pushes nobody out of a class above it.
    assert queue.push("b2", "z", BATCH, 3.0) == (None, None)
    assert drain(queue) == ["i", "d", "b-old"]


def test_full_queue_makes_a_heavy_tenant_give_way_within_a_class() -> None:
    queue = q(max_queue=4)
    for i in range(3):
        queue.push(f"h{i}", "heavy", DEFAULT, float(i))
    queue.push("l0", "light", DEFAULT, 3.0)
    w, out = queue.push("l1", "light", DEFAULT, 4.0)
    assert w is not None and out is not None and out.item == "h2"
    # Now heavy 2, light 2: nobody holds more than one request over the newcomer's share.
    assert queue.push("l2", "light", DEFAULT, 5.0) == (None, None)
    assert queue.push("h9", "heavy", DEFAULT, 5.0) == (None, None)
    assert sorted(drain(queue)) == ["h0", "h1", "l0", "l1"]
    assert queue.tenants == {}


def test_removed_waiter_leaves_at_once_and_is_never_popped() -> None:
    queue = q()
    a, _ = queue.push("a", "t1", DEFAULT, 0.0)
    queue.push("b", "t2", DEFAULT, 0.0)
    c, _ = queue.push("c", "t1", BATCH, 0.0)
    assert a is not None and c is not None
    assert queue.remove(a) and len(queue) == 2
    assert not queue.remove(a)
    assert queue.remove(c) and queue.length(BATCH) == 0
    assert drain(queue) == ["b"]
    assert queue.oldest_wait(BATCH, 5.0) == 0.0


def test_oldest_wait_per_class() -> None:
    queue = q()
    queue.push("a", "t", BATCH, 1.0)
    queue.push("b", "t", BATCH, 2.0)
    assert queue.oldest_wait(BATCH, 4.0) == pytest.approx(3.0)
    assert queue.oldest_wait(INTERACTIVE, 4.0) == 0.0


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        QueueConfig(10, (1.0, 2.0), 1.0)
    with pytest.raises(ValueError):
        QueueConfig(10, (1.0, 0.0, 2.0), 1.0)
    cfg = QueueConfig(10, (1.0, 2.0, 3.0), 4.0)
    assert [cfg.effective_class(BATCH, w) for w in (0, 3.9, 4.0, 8.0, 100.0)] == [2, 2, 1, 0, 0]
    assert cfg.timeout_of(BATCH) == 3.0
