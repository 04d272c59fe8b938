"""Deposit detection: noticing that an item was put in the bin and has come to rest, so it can be classified.

Two kinds, one door. Both emit the same `DepositEvent`s through `next_event()`:

    EMPTY --arrived--> ARRIVING --settled (once per item)--> SETTLED --removed--> EMPTY

(ARRIVING can also fall back to EMPTY with `removed`, when something passed through without staying.)

- `VisionDepositDetector` watches the camera's small grey stream: background subtraction against the
  empty scene says whether something is there, frame differencing says whether it still moves.
- `GpioDepositDetector` watches a sensor (break-beam, switch, PIR, ultrasonic) through gpiozero, debounced.

The pure logic of the vision kind is `SceneWatcher`, which `tools/bench/detector.py` measures.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import cv2
import numpy as np

from recyclex_edge.camera.source import Frame
from recyclex_edge.config.detector import DetectorConfig, GpioDetectorConfig, VisionDetectorConfig
from recyclex_edge.gpio import GpioError, InputSignal

log = logging.getLogger(__name__)

_EVENT_QUEUE_SIZE = 16  # events are a few per item; a full queue means nobody is listening


class DepositState(StrEnum):
    EMPTY = "empty"
    ARRIVING = "arriving"
    SETTLED = "settled"


class DepositEventKind(StrEnum):
    ARRIVED = "arrived"
    SETTLED = "settled"
    REMOVED = "removed"


@dataclass(frozen=True)
class DepositEvent:
    """A state change. `timestamp_s` is on the `time.monotonic()` clock (the frame's, for vision), so
    `settled -> actuated` latency is a plain subtraction; `sequence` is the frame that decided it."""

    kind: DepositEventKind
    timestamp_s: float
    sequence: int | None = None


class DepositDetector(ABC):
    """The door the daemon uses: `start()`, then `next_event()` in a loop, then `close()`.

    >>> detector.start()
    >>> event = detector.next_event(timeout_s=1.0)
    >>> if event is not None and event.kind is DepositEventKind.SETTLED: ...
    """

    def __init__(self) -> None:
        self._events: queue.Queue[DepositEvent] = queue.Queue(maxsize=_EVENT_QUEUE_SIZE)
        self._state = DepositState.EMPTY
        self._state_lock = threading.Lock()
        self._deposits = 0

    @property
    def state(self) -> DepositState:
        with self._state_lock:
            return self._state

    @property
    def deposits(self) -> int:
        """Items that settled since start (whatever became of them: maintenance mode ignores them)."""
        return self._deposits

    def next_event(self, timeout_s: float) -> DepositEvent | None:
        """The oldest unread event, or None if none came within `timeout_s`."""
        try:
            return self._events.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def _emit(self, state: DepositState, event: DepositEvent) -> None:
        with self._state_lock:
            self._state = state
            self._deposits += event.kind is DepositEventKind.SETTLED
        log.debug("deposit %s (seq %s)", event.kind.value, event.sequence)  # INFO is one line per item
        while True:
            try:
                self._events.put_nowait(event)
                return
            except queue.Full:
                # Overflow policy: the newest event matters, the oldest unread one is dropped.
                try:
                    dropped = self._events.get_nowait()
                    log.warning("deposit events not consumed; dropped %s", dropped.kind.value)
                except queue.Empty:
                    pass

    @abstractmethod
    def start(self) -> None:
        """Begin watching."""

    @abstractmethod
    def close(self) -> None:
        """Stop watching and release what the detector opened."""

    def __enter__(self) -> DepositDetector:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class SceneWatcher:
    """The vision state machine, one small grey frame at a time. No threads, no clocks of its own.

    The empty scene is a running average (so slow light changes follow), learnt only while the scene is
    empty: an item lying still must not fade into the background. A scene that stays changed and still
    for `relearn_s` (the lights changed while an item was there, something is stuck to the tray, the
    scene was not empty at start) becomes the new empty scene, with a `removed` event, so the detector
    can never lock up waiting for a scene that will not come back.

    >>> watcher = SceneWatcher(VisionDetectorConfig())
    >>> event = watcher.update(frame.small, frame.timestamp_s, frame.sequence)
    """

    def __init__(self, config: VisionDetectorConfig) -> None:
        self.config = config
        self.state = DepositState.EMPTY
        self.changed_fraction = 0.0  # share of pixels unlike the empty scene, last frame
        self.moving_fraction = 0.0  # share of pixels unlike the previous frame
        self._background: np.ndarray | None = None
        self._previous: np.ndarray | None = None
        self._still_since_s: float | None = None
        self._clear_since_s: float | None = None

    def _fraction_over(self, a: np.ndarray, b: np.ndarray) -> float:
        difference = cv2.absdiff(a, b)
        _, mask = cv2.threshold(difference, self.config.pixel_threshold, 255, cv2.THRESH_BINARY)
        return float(cv2.countNonZero(mask)) / mask.size

    def update(
        self, small: np.ndarray, timestamp_s: float, sequence: int | None = None
    ) -> DepositEvent | None:
        """Feed one frame; returns the event it caused, if any."""
        config = self.config
        # A light blur keeps sensor noise and JPEG blocks from counting as change.
        grey = cv2.GaussianBlur(small, (5, 5), 0)
        if self._background is None or self._previous is None or self._background.shape != grey.shape:
            self._background = grey.astype(np.float32)
            self._previous = grey
            return None
        background = cv2.convertScaleAbs(self._background)
        self.changed_fraction = self._fraction_over(grey, background)
        self.moving_fraction = self._fraction_over(grey, self._previous)
        self._previous = grey

        present = self.changed_fraction >= config.present_fraction
        clear = self.changed_fraction < config.clear_fraction
        still = self.moving_fraction < config.motion_fraction
        if clear:
            self._clear_since_s = self._clear_since_s if self._clear_since_s is not None else timestamp_s
        else:
            self._clear_since_s = None
        if still and present:
            self._still_since_s = self._still_since_s if self._still_since_s is not None else timestamp_s
        else:
            self._still_since_s = None

        if self.state is DepositState.EMPTY:
            if present:
                self.state = DepositState.ARRIVING
                return DepositEvent(DepositEventKind.ARRIVED, timestamp_s, sequence)
            cv2.accumulateWeighted(grey, self._background, config.background_alpha)
            return None
        if self._clear_since_s is not None and timestamp_s - self._clear_since_s >= config.clear_s:
            self.state = DepositState.EMPTY
            return DepositEvent(DepositEventKind.REMOVED, timestamp_s, sequence)
        if self._still_since_s is not None and timestamp_s - self._still_since_s >= config.relearn_s:
            log.warning(
                "scene changed but still for %.0f s: taking it as the new empty scene", config.relearn_s
            )
            self._background = grey.astype(np.float32)
            self._still_since_s = None
            self.state = DepositState.EMPTY
            return DepositEvent(DepositEventKind.REMOVED, timestamp_s, sequence)
        if (
            self.state is DepositState.ARRIVING
            and self._still_since_s is not None
            and timestamp_s - self._still_since_s >= config.settle_s
        ):
            # Movement while SETTLED is ignored on purpose: a nudge must not classify the item twice.
            self.state = DepositState.SETTLED
            return DepositEvent(DepositEventKind.SETTLED, timestamp_s, sequence)
        return None


class FrameFeed(Protocol):
    """What the vision detector needs from the camera: `Camera` is one."""

    def wait_for_frame(self, after_sequence: int = -1, timeout_s: float = 1.0) -> Frame | None: ...


class VisionDepositDetector(DepositDetector):
    """Watches the small stream of a frame feed (the Camera) in a named thread.

    >>> with VisionDepositDetector(camera, config.detector.vision) as detector:
    ...     event = detector.next_event(timeout_s=1.0)
    """

    def __init__(self, frames: FrameFeed, config: VisionDetectorConfig) -> None:
        super().__init__()
        self._frames = frames
        self.watcher = SceneWatcher(config)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deposit-detector", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        sequence = -1
        while not self._stop.is_set():
            frame = self._frames.wait_for_frame(sequence, timeout_s=0.5)
            if frame is None:
                continue  # no camera right now: the camera reports that, we just keep waiting
            sequence = frame.sequence
            event = self.watcher.update(frame.small, frame.timestamp_s, frame.sequence)
            if event is not None:
                self._emit(self.watcher.state, event)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)


class Presence(Protocol):
    """A sensor reduced to 'is something there?', with a callback on every change."""

    when_changed: Callable[[bool], None] | None

    @property
    def is_on(self) -> bool: ...

    def close(self) -> None: ...


class DistancePresence:
    """An ultrasonic DistanceSensor as a presence sensor: on while the reading is under `present_below_m`.

    >>> presence = DistancePresence(DistanceSensor(echo=24, trigger=23), present_below_m=0.15)
    """

    def __init__(self, sensor: Any, present_below_m: float) -> None:
        self._sensor = sensor
        self.when_changed: Callable[[bool], None] | None = None
        sensor.threshold_distance = present_below_m
        sensor.when_in_range = self._changed
        sensor.when_out_of_range = self._changed

    @property
    def is_on(self) -> bool:
        return bool(self._sensor.in_range)

    def _changed(self) -> None:
        callback = self.when_changed
        if callback is not None:
            callback(self.is_on)

    def close(self) -> None:
        # gpiozero 2.0.1's DistanceSensor.close() drops its trigger pin before it stops the thread that
        # takes readings, so a reading in flight then fails on None (seen under load in the suite). Its
        # parent's close() stops and joins that thread first; the full close then frees the rest.
        from gpiozero import SmoothedInputDevice

        if isinstance(self._sensor, SmoothedInputDevice):
            SmoothedInputDevice.close(self._sensor)
        self._sensor.close()


class GpioDepositDetector(DepositDetector):
    """A presence sensor, debounced: a level counts once it has held for `debounce_s`, and an item is
    settled once the sensor has said 'there' continuously for `settle_s`.

    Pin changes arrive as callbacks from gpiozero's threads; one named thread sleeps until the next
    deadline, so nothing polls.

    >>> beam = InputSignal(InputPinConfig(pin=17, pull="up", active_when="low"), pin_factory=factory)
    >>> with GpioDepositDetector(beam, debounce_s=0.05, settle_s=0.5) as detector:
    ...     event = detector.next_event(timeout_s=1.0)
    """

    def __init__(self, presence: Presence, *, debounce_s: float, settle_s: float) -> None:
        super().__init__()
        self._presence = presence
        self.debounce_s = debounce_s
        self.settle_s = settle_s
        self._changed = threading.Condition()
        self._raw = presence.is_on
        self._raw_since_s = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deposit-detector", daemon=True)
        presence.when_changed = self._on_change

    def _on_change(self, on: bool) -> None:
        with self._changed:
            if on != self._raw:
                self._raw = on
                self._raw_since_s = time.monotonic()
            self._changed.notify()

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        state = DepositState.EMPTY
        while not self._stop.is_set():
            with self._changed:
                raw, since_s = self._raw, self._raw_since_s
                now = time.monotonic()
                held_s = now - since_s
                wait_s = 1.0
                if raw and state is DepositState.EMPTY:
                    if held_s >= self.debounce_s:
                        state = DepositState.ARRIVING
                        self._emit(state, DepositEvent(DepositEventKind.ARRIVED, since_s))
                    else:
                        wait_s = self.debounce_s - held_s
                if raw and state is DepositState.ARRIVING:
                    settle_after_s = max(self.debounce_s, self.settle_s)
                    if held_s >= settle_after_s:
                        state = DepositState.SETTLED
                        self._emit(state, DepositEvent(DepositEventKind.SETTLED, since_s + settle_after_s))
                    else:
                        wait_s = settle_after_s - held_s
                if not raw and state is not DepositState.EMPTY:
                    if held_s >= self.debounce_s:
                        state = DepositState.EMPTY
                        self._emit(state, DepositEvent(DepositEventKind.REMOVED, since_s))
                    else:
                        wait_s = self.debounce_s - held_s
                if not self._stop.is_set():
                    self._changed.wait(timeout=wait_s)

    def close(self) -> None:
        self._stop.set()
        with self._changed:
            self._changed.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self._presence.close()


def build_presence(config: GpioDetectorConfig, pin_factory: Any) -> Presence:
    """The gpiozero device `detector.gpio` describes, as a presence sensor. Raises GpioError."""
    if config.kind == "distance":
        from gpiozero import DistanceSensor, PWMSoftwareFallback

        assert config.distance is not None  # the config validator guarantees it
        try:
            with warnings.catch_warnings():
                # gpiozero suggests pigpio for accuracy; centimetres are plenty to see an item.
                warnings.simplefilter("ignore", PWMSoftwareFallback)
                sensor = DistanceSensor(
                    echo=config.distance.echo_pin,
                    trigger=config.distance.trigger_pin,
                    max_distance=config.distance.max_distance_m,
                    pin_factory=pin_factory,
                )
        except Exception as error:
            raise GpioError(f"cannot open the distance sensor: {error}") from error
        return DistancePresence(sensor, config.present_below_m)
    assert config.input is not None  # the config validator guarantees it
    return InputSignal(config.input, pin_factory=pin_factory, motion=config.kind == "motion")


def build_detector(config: DetectorConfig, frames: FrameFeed, pin_factory: Any) -> DepositDetector | None:
    """The detector `detector.kind` asks for (not started), or None for 'none'. Raises GpioError."""
    if config.kind == "none":
        return None
    if config.kind == "vision":
        return VisionDepositDetector(frames, config.vision)
    assert config.gpio is not None  # the config validator guarantees it
    presence = build_presence(config.gpio, pin_factory)
    return GpioDepositDetector(presence, debounce_s=config.gpio.debounce_s, settle_s=config.gpio.settle_s)
