"""Event ids: unique, and sortable by time as plain strings (ULID layout).

48 bits of milliseconds since the epoch then 80 random bits, in Crockford base32 (26 characters). Ids
made within the same millisecond increment the random part, so they still sort in creation order;
subscribers use the id to drop the duplicates that at-least-once delivery may bring.
"""

from __future__ import annotations

import secrets
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 80


class _IdClock:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_random = 0

    def next(self, now_ms: int | None = None) -> int:
        with self._lock:
            ms = int(time.time() * 1000) if now_ms is None else now_ms
            if ms <= self._last_ms:
                # Same millisecond (or the wall clock stepped back): keep order by counting up.
                ms = self._last_ms
                self._last_random += 1
            else:
                self._last_random = secrets.randbits(_RANDOM_BITS - 1)  # headroom for increments
            self._last_ms = ms
            return (ms << _RANDOM_BITS) | self._last_random


_clock = _IdClock()


def new_event_id() -> str:
    value = _clock.next()
    return "".join(_ALPHABET[(value >> shift) & 31] for shift in range(125, -1, -5))
