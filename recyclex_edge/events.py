"""The bin's own events (classifications, sorts), fanned out to whoever listens right now.

Producers are threads (the camera pipeline, the sorter) or the event loop; consumers are asyncio tasks
(WebSocket subscribers). Each subscriber has a bounded queue: a slow one loses its oldest events, counted,
and never slows the producer or another subscriber down. Durable delivery is the MQTT outbox's job, not
this hub's.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any

log = logging.getLogger("recyclex_edge.events")


class Subscription:
    """One listener's bounded queue. Use as a context manager so it always unsubscribes.

    >>> with hub.subscribe() as subscription:
    ...     event = await subscription.get()
    """

    def __init__(self, hub: EventHub, loop: asyncio.AbstractEventLoop, queue_size: int) -> None:
        self._hub = hub
        self._loop = loop
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=queue_size)
        self._dropped_since_read = 0
        self.dropped_total = 0

    def _put(self, event: dict[str, Any]) -> None:
        """Runs on the subscriber's loop. Drop-oldest keeps the newest state, what a live view wants."""
        if self._queue.full():
            self._queue.get_nowait()
            self._dropped_since_read += 1
            self.dropped_total += 1
        self._queue.put_nowait(event)

    def deliver(self, event: dict[str, Any]) -> None:
        """Called from any thread."""
        self._loop.call_soon_threadsafe(self._put, event)

    async def get(self) -> tuple[dict[str, Any], int]:
        """The next event and how many were dropped before it since the previous `get`."""
        event = await self._queue.get()
        dropped, self._dropped_since_read = self._dropped_since_read, 0
        return event, dropped

    def close(self) -> None:
        self._hub._remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class EventHub:
    """Publish from any thread; subscribe from a running event loop.

    >>> hub = EventHub(queue_size=100)
    >>> hub.publish({"type": "classification", "class": "glass", "confidence": 0.97})
    """

    def __init__(self, queue_size: int = 100) -> None:
        self.queue_size = queue_size
        self._lock = threading.Lock()
        self._subscribers: list[Subscription] = []
        self.published_total = 0

    def subscribe(self) -> Subscription:
        subscription = Subscription(self, asyncio.get_running_loop(), self.queue_size)
        with self._lock:
            self._subscribers.append(subscription)
        return subscription

    def _remove(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscribers:
                self._subscribers.remove(subscription)

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def publish(self, event: Mapping[str, Any]) -> None:
        """Hand `event` to every subscriber. Never blocks; each subscriber gets its own copy."""
        with self._lock:
            subscribers = list(self._subscribers)
            self.published_total += 1
        for subscription in subscribers:
            try:
                subscription.deliver(dict(event))
            except RuntimeError:  # its loop has closed: the subscriber is gone
                log.debug("dropping a subscriber whose event loop has closed")
                self._remove(subscription)
