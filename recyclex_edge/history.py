"""What the bin remembers in memory for the technician page: its last events and the last hours per minute.

The sorting pipeline hands every event here (an event sink, with the first frame of the item's burst);
the HTTP API reads it. Memory is bounded by construction: a ring of `max_events` events, each with one
small JPEG thumbnail encoded once when it arrives, and one bucket per minute for `window_minutes`.
Nothing is written to disk: a restart starts an empty history, which is what a live view wants.

>>> history = History(max_events=50, window_minutes=180)
>>> history.record(event, frame_bgr)        # from the pipeline thread
>>> history.events(), history.series()      # from the event loop
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

log = logging.getLogger(__name__)

BUCKET_S = 60
# The parts of an event the page lists; probabilities and the rest stay with MQTT and the WebSocket.
_EVENT_KEYS = ("id", "ts", "class", "confidence", "decision", "action", "model")


@dataclass
class _Minute:
    items: int = 0
    by_class: dict[str, int] = field(default_factory=dict)
    inference_ms_sum: float = 0.0
    inference_ms_count: int = 0


def scaled_jpeg(frame_bgr: np.ndarray, width_px: int, quality: int = 70) -> bytes | None:
    """`frame_bgr` scaled to `width_px` wide (never enlarged) as JPEG bytes, or None if it cannot be."""
    if frame_bgr.ndim not in (2, 3) or frame_bgr.shape[0] == 0 or frame_bgr.shape[1] == 0:
        return None
    height, width = frame_bgr.shape[:2]
    if width > width_px:
        scaled_height = max(1, round(height * width_px / width))
        frame_bgr = cv2.resize(frame_bgr, (width_px, scaled_height), interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", frame_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return encoded.tobytes() if ok else None


class History:
    """Recent events (newest last in memory, newest first out) and per-minute series. Thread-safe."""

    def __init__(
        self,
        *,
        max_events: int = 50,
        window_minutes: int = 180,
        thumbnail_width_px: int = 96,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_events < 1 or window_minutes < 1:
            raise ValueError("max_events and window_minutes must be at least 1")
        self.max_events = max_events
        self.window_minutes = window_minutes
        self.thumbnail_width_px = thumbnail_width_px
        self._clock = clock
        self._lock = threading.Lock()
        self._events: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._thumbnails: dict[str, bytes] = {}
        self._minutes: OrderedDict[int, _Minute] = OrderedDict()

    def record(self, event: dict[str, Any], frame_bgr: np.ndarray | None) -> None:
        """Remember one pipeline event. Encodes the thumbnail here, once, outside the lock."""
        event_id = str(event.get("id", ""))
        if not event_id:
            log.warning("an event without an id was not recorded in the history")
            return
        thumbnail = None
        if frame_bgr is not None:
            try:
                thumbnail = scaled_jpeg(frame_bgr, self.thumbnail_width_px)
            except cv2.error as error:  # an odd frame costs its thumbnail, never the event
                log.warning("no thumbnail for event %s: %s", event_id, error)
        summary = {key: event[key] for key in _EVENT_KEYS if key in event}
        timing = event.get("timing") or {}
        per_frame_ms = _per_frame_inference_ms(timing)
        summary["inference_ms"] = per_frame_ms
        minute = int(self._clock() // BUCKET_S)
        with self._lock:
            self._events[event_id] = summary
            self._events.move_to_end(event_id)
            if thumbnail is not None:
                self._thumbnails[event_id] = thumbnail
            while len(self._events) > self.max_events:
                old_id, _ = self._events.popitem(last=False)
                self._thumbnails.pop(old_id, None)
            bucket = self._minutes.get(minute)
            if bucket is None:
                bucket = self._minutes[minute] = _Minute()
            bucket.items += 1
            label = str(event.get("class", "unknown"))
            bucket.by_class[label] = bucket.by_class.get(label, 0) + 1
            if per_frame_ms is not None:
                bucket.inference_ms_sum += per_frame_ms
                bucket.inference_ms_count += 1
            self._forget_old_minutes(minute)

    def _forget_old_minutes(self, now_minute: int) -> None:
        """Minutes out of the window go; so do "future" ones left by the clock stepping back (a Pi without
        a real-time clock boots with a stale time until NTP corrects it), so the count stays bounded."""
        oldest_kept = now_minute - self.window_minutes + 1
        for minute in [m for m in self._minutes if not oldest_kept <= m <= now_minute]:
            del self._minutes[minute]

    def events(self) -> list[dict[str, Any]]:
        """The recent events, newest first, each with `thumbnail` true when there is an image for it."""
        with self._lock:
            listed = [
                {**summary, "thumbnail": event_id in self._thumbnails}
                for event_id, summary in self._events.items()
            ]
        listed.reverse()
        return listed

    def thumbnail(self, event_id: str) -> bytes | None:
        with self._lock:
            return self._thumbnails.get(event_id)

    def series(self) -> dict[str, Any]:
        """Per-minute columns over the whole window, oldest first; the last entry is the current minute.

        `items` and `by_class` count events; `inference_ms` is the mean per-frame inference time of the
        minute's items, null for a minute without items.
        """
        now_minute = int(self._clock() // BUCKET_S)
        first = now_minute - self.window_minutes + 1
        with self._lock:
            self._forget_old_minutes(now_minute)
            buckets = dict(self._minutes)
        minutes = range(first, now_minute + 1)
        labels = sorted({label for bucket in buckets.values() for label in bucket.by_class})
        empty = _Minute()
        column = [buckets.get(minute, empty) for minute in minutes]
        return {
            "bucket_s": BUCKET_S,
            "start_s": first * BUCKET_S,
            "items": [bucket.items for bucket in column],
            "by_class": {label: [bucket.by_class.get(label, 0) for bucket in column] for label in labels},
            "inference_ms": [
                round(bucket.inference_ms_sum / bucket.inference_ms_count, 3)
                if bucket.inference_ms_count
                else None
                for bucket in column
            ],
        }


def _per_frame_inference_ms(timing: dict[str, Any]) -> float | None:
    """The event's inference time per classified frame (the event carries the burst's total)."""
    total_ms = timing.get("inference_ms")
    frames = timing.get("frames") or 1
    if not isinstance(total_ms, int | float) or not isinstance(frames, int) or frames < 1:
        return None
    return round(float(total_ms) / frames, 3)
