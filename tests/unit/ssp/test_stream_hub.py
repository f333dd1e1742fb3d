import threading
import time

import pytest

from ssp_svc.stream_hub import StreamHub
from svc_common.errors import ServiceError


def test_delivers_in_order() -> None:
    hub: StreamHub[int] = StreamHub(capacity=10)
    with hub.subscribe() as sub:
        for i in range(3):
            hub.publish(i, 1000 + i)
        got = [sub.get(0.1) for _ in range(3)]
    assert [(d.item, d.sent_at_ms, d.dropped_since_last) for d in got if d] == [
        (0, 1000, 0),
        (1, 1001, 0),
        (2, 1002, 0),
    ]


def test_full_buffer_drops_oldest_and_reports_counts() -> None:
    hub: StreamHub[int] = StreamHub(capacity=3)
    sub = hub.subscribe()
    for i in range(10):
        hub.publish(i, 0)
    first = sub.get(0.1)
    assert first is not None
    assert first.item == 7 and first.dropped_since_last == 7 and first.dropped_total == 7
    second = sub.get(0.1)
    assert second is not None and second.item == 8 and second.dropped_since_last == 0
    assert hub.dropped == 7 and hub.published == 10
    hub.publish(10, 0)
    hub.publish(11, 0)
    hub.publish(12, 0)  # buffer held [9]; now [10, 11, 12] after dropping 9
    nxt = sub.get(0.1)
    assert nxt is not None and nxt.item == 10 and nxt.dropped_since_last == 1
    assert nxt.dropped_total == 8


def test_filter_and_independent_subscribers() -> None:
    hub: StreamHub[int] = StreamHub(capacity=2)
    evens = hub.subscribe(lambda i: i % 2 == 0)
    everything = hub.subscribe()
    for i in range(4):
        hub.publish(i, 0)
    e1, e2 = evens.get(0.1), evens.get(0.1)
    assert e1 is not None and e2 is not None
    assert [e1.item, e2.item] == [0, 2] and e1.dropped_total == 0
    a = everything.get(0.1)
    assert a is not None and a.item == 2 and a.dropped_total == 2


def test_a_subscriber_that_never_reads_never_blocks_publish() -> None:
    hub: StreamHub[int] = StreamHub(capacity=4)
    hub.subscribe()
    start = time.perf_counter()
    for i in range(50_000):
        hub.publish(i, 0)
    assert time.perf_counter() - start < 2.0
    assert hub.dropped == 50_000 - 4


def test_close_wakes_a_waiting_subscriber() -> None:
    hub: StreamHub[int] = StreamHub()
    sub = hub.subscribe()
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(sub.get(5.0)))
    t.start()
    time.sleep(0.05)
    hub.close()
    t.join(2)
    assert result == [None] and sub.closed
    assert hub.subscriber_count == 0


def test_subscriber_limit() -> None:
    hub: StreamHub[int] = StreamHub(max_subscribers=1)
    hub.subscribe()
    with pytest.raises(ServiceError) as exc:
        hub.subscribe()
    assert exc.value.reason == "TOO_MANY_SUBSCRIBERS"


def test_one_owner_cannot_take_every_subscriber_slot() -> None:
    """Security: a single API key (a publisher's, say) must not lock real subscribers out."""
    hub: StreamHub[int] = StreamHub(capacity=4, max_subscribers=16, max_per_owner=2)
    held = [hub.subscribe(owner="publisher:p1") for _ in range(2)]
    with pytest.raises(ServiceError) as exc:
        hub.subscribe(owner="publisher:p1")
    assert exc.value.reason == "TOO_MANY_STREAMS_FOR_ACCOUNT"
    other = hub.subscribe(owner="subscriber:s1")
    held[0].close()
    again = hub.subscribe(owner="publisher:p1")
    for s in (held[1], other, again):
        s.close()
    assert hub.subscriber_count == 0


def test_publishers_together_hold_at_most_half_the_slots() -> None:
    """Four publishers' keys at four streams each took all 16 slots, and no subscriber could
    stream until one of them let go, which nothing made them do."""
    hub: StreamHub[int] = StreamHub(capacity=4, max_subscribers=16, max_per_owner=4)
    held = [
        hub.subscribe(owner=f"publisher:p{p}", limited=True) for p in range(2) for _ in range(4)
    ]
    with pytest.raises(ServiceError) as exc:
        hub.subscribe(owner="publisher:p3", limited=True)
    assert exc.value.reason == "TOO_MANY_PUBLISHER_STREAMS"
    subscribers = [hub.subscribe(owner=f"subscriber:s{i}") for i in range(2) for _ in range(4)]
    assert hub.subscriber_count == 16
    held[0].close()
    again = hub.subscribe(owner="publisher:p3", limited=True)  # a publisher's slot freed
    for s in (*held[1:], *subscribers, again):
        s.close()
    assert hub.subscriber_count == 0
