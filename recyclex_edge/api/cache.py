"""Recent /predict/image answers, in process memory.

Keyed by the upload's sha256 and the model version: the same bytes sent to the same model give the same
answer, so a technician re-sending a photo (or a client retrying) costs no inference. A bin is one
process on one host, so a shared cache (Redis, as the original backend had) would add a service to run
and a network hop for nothing. The whole cache is dropped when the model changes.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class ResultCache(Generic[T]):
    """An LRU with a TTL. Used from the event loop only, so it needs no lock."""

    def __init__(self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._model_id: str | None = None
        self._entries: OrderedDict[tuple[str, str], tuple[float, T]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _use_model(self, model_id: str) -> None:
        if model_id != self._model_id:
            self._entries.clear()
            self._model_id = model_id

    def get(self, digest: str, model_version: str, model_id: str) -> T | None:
        """The answer for this upload and model, if fresh. `model_id` (the model file's sha256) changing
        drops everything, even if a retrained model kept its version string."""
        self._use_model(model_id)
        key = (digest, model_version)
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, digest: str, model_version: str, model_id: str, value: T) -> None:
        self._use_model(model_id)
        key = (digest, model_version)
        self._entries[key] = (self._clock() + self.ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
