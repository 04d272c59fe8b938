"""Token buckets per (client, route bucket), with a bounded memory of clients."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping


class TokenBucket:
    """`capacity` requests at once, refilled at `rate_per_s`. The WebSocket uses one per socket for fps."""

    __slots__ = ("_clock", "_updated", "capacity", "rate_per_s", "tokens")

    def __init__(
        self, capacity: float, rate_per_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.capacity = capacity
        self.rate_per_s = rate_per_s
        self.tokens = capacity
        self._clock = clock
        self._updated = clock()

    def take(self) -> float:
        """0.0 when a token was taken; otherwise the seconds until one is available."""
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._updated) * self.rate_per_s)
        self._updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s


class RateLimiter:
    """One bucket per client and route bucket name; `rates` maps a bucket name to (requests, period_s).

    Forgetting the least recently seen clients beyond `max_clients` bounds memory; a forgotten client
    merely starts again with a full bucket.
    """

    def __init__(
        self,
        rates: Mapping[str, tuple[int, float]],
        max_clients: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rates = dict(rates)
        self._max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[tuple[str, str], TokenBucket] = OrderedDict()

    def retry_after_s(self, client: str, bucket_name: str) -> int:
        """0 when the request may go ahead, else whole seconds to wait (for Retry-After)."""
        key = (client, bucket_name)
        bucket = self._buckets.get(key)
        if bucket is None:
            requests, period_s = self._rates[bucket_name]
            bucket = TokenBucket(requests, requests / period_s, self._clock)
            self._buckets[key] = bucket
            if len(self._buckets) > self._max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        wait_s = bucket.take()
        return math.ceil(wait_s) if wait_s > 0 else 0
