"""The in-process event hub: publish from any thread, bounded per-subscriber queues, drop-oldest."""

from __future__ import annotations

import asyncio
import threading

from recyclex_edge.events import EventHub


async def test_every_subscriber_gets_each_event_published_from_another_thread() -> None:
    hub = EventHub(queue_size=10)
    with hub.subscribe() as first, hub.subscribe() as second:
        publisher = threading.Thread(target=lambda: [hub.publish({"n": n}) for n in range(3)])
        publisher.start()
        publisher.join()
        for subscription in (first, second):
            received = [await asyncio.wait_for(subscription.get(), 2) for _ in range(3)]
            assert received == [({"n": 0}, 0), ({"n": 1}, 0), ({"n": 2}, 0)]
    assert hub.subscriber_count == 0, "leaving the with-block must unsubscribe"


async def test_a_slow_subscriber_loses_its_oldest_events_counted() -> None:
    hub = EventHub(queue_size=3)
    with hub.subscribe() as slow:
        for n in range(10):
            hub.publish({"n": n})
        await asyncio.sleep(0.05)  # deliveries are scheduled on the loop
        event, dropped = await slow.get()
        assert event == {"n": 7} and dropped == 7, "drop-oldest keeps the newest three"
        assert [await slow.get() for _ in range(2)] == [({"n": 8}, 0), ({"n": 9}, 0)]
        assert slow.dropped_total == 7


async def test_subscribers_get_copies_and_publishing_without_subscribers_is_harmless() -> None:
    hub = EventHub()
    hub.publish({"nobody": "listens"})
    with hub.subscribe() as subscription:
        event = {"class": "glass"}
        hub.publish(event)
        received, _ = await asyncio.wait_for(subscription.get(), 2)
        received["class"] = "changed"
        assert event == {"class": "glass"}
    assert hub.published_total == 2
