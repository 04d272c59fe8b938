"""Deposit detection, both kinds: vision on replayed real photos, and a debounced sensor on mock pins."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory

from recyclex_edge.camera import (
    Camera,
    DepositTiming,
    Frame,
    ReplaySource,
    ScenePhase,
    SceneTruth,
    SourceEndedError,
    find_photos,
)
from recyclex_edge.config.detector import DetectorConfig, GpioDetectorConfig, VisionDetectorConfig
from recyclex_edge.config.gpio import DistanceSensorConfig, InputPinConfig
from recyclex_edge.detector import (
    DepositEvent,
    DepositEventKind,
    DepositState,
    GpioDepositDetector,
    SceneWatcher,
    VisionDepositDetector,
    build_detector,
)
from recyclex_edge.gpio import InputSignal
from recyclex_edge.health import HealthRegistry
from tests.hardware.conftest import MockPWMTriggerPin, echo_time_s, wait_until

ARRIVED, SETTLED, REMOVED = DepositEventKind.ARRIVED, DepositEventKind.SETTLED, DepositEventKind.REMOVED


class NoFrames:
    """A frame feed that never has a frame (for detectors that do not look at the camera)."""

    def wait_for_frame(self, after_sequence: int = -1, timeout_s: float = 1.0) -> Frame | None:
        time.sleep(timeout_s)
        return None


NO_FRAMES = NoFrames()


def test_vision_settles_once_per_replayed_item(photo_folder: Path) -> None:
    source = ReplaySource(
        photo_folder,
        width=320,
        height=240,
        fps=15.0,
        small_size=(160, 120),
        timing=DepositTiming(empty_s=1.0, arrive_s=0.4, dwell_s=2.0, remove_s=0.3),
        paced=False,
        loop=False,
    )
    watcher = SceneWatcher(VisionDetectorConfig(settle_s=0.5))
    source.open()
    seen: list[tuple[DepositEvent, SceneTruth]] = []
    with pytest.raises(SourceEndedError):
        while (frame := source.read(timeout_s=1.0)) is not None:
            event = watcher.update(frame.small, frame.timestamp_s, frame.sequence)
            if event is not None:
                assert frame.scene is not None
                seen.append((event, frame.scene))

    assert [event.kind for event, _ in seen] == [ARRIVED, SETTLED, REMOVED] * 3
    for item in range(3):
        arrived, settled, removed = seen[3 * item : 3 * item + 3]
        assert arrived[1].phase is ScenePhase.ARRIVING and arrived[1].item_index == item
        # Settled only once the item lay still, and for the photo that is being shown.
        assert settled[1].phase is ScenePhase.SETTLED and settled[1].item_index == item
        assert settled[0].timestamp_s - arrived[0].timestamp_s >= 0.5
        assert removed[1].phase is ScenePhase.EMPTY
    assert watcher.state is DepositState.EMPTY


def test_vision_relearns_a_scene_that_stays_changed(photo_folder: Path) -> None:
    """Something left on the tray for good must not lock the detector up: it becomes the empty scene."""
    source = ReplaySource(photo_folder, width=320, height=240, fps=10.0, small_size=(160, 120), paced=False)
    source.open()
    tray = source.read(timeout_s=1.0)
    assert tray is not None and tray.scene is not None and tray.scene.phase is ScenePhase.EMPTY
    stuck = cv2.resize(
        cv2.imread(str(find_photos(photo_folder)[0])), (160, 120), interpolation=cv2.INTER_AREA
    )
    stuck_small = cv2.cvtColor(stuck, cv2.COLOR_BGR2GRAY)
    watcher = SceneWatcher(VisionDetectorConfig(settle_s=0.5, relearn_s=5.0))

    def feed(small: np.ndarray, start_s: float, seconds: float) -> list[DepositEventKind]:
        steps = round(seconds * 10)
        events = [watcher.update(small, start_s + i / 10) for i in range(steps)]
        return [event.kind for event in events if event is not None]

    assert feed(tray.small, 0.0, 1.0) == []
    assert feed(stuck_small, 1.0, 4.0) == [ARRIVED, SETTLED]
    assert feed(stuck_small, 5.0, 4.0) == [REMOVED], "still and changed for relearn_s: the new empty scene"
    assert watcher.state is DepositState.EMPTY
    assert feed(stuck_small, 9.0, 10.0) == [], "the relearnt scene is empty now"
    # The old tray now differs from the learnt scene: it counts as a new deposit (and so on).
    assert feed(tray.small, 19.0, 1.0) == [ARRIVED, SETTLED]


def test_vision_detector_thread_reads_the_camera(photo_folder: Path, health: HealthRegistry) -> None:
    """The door the daemon uses: Camera -> VisionDepositDetector -> next_event(), paced like a real bin."""
    source = ReplaySource(
        photo_folder,
        width=320,
        height=240,
        fps=30.0,
        small_size=(160, 120),
        timing=DepositTiming(empty_s=0.4, arrive_s=0.2, dwell_s=1.0, remove_s=0.2),
        loop=False,
    )
    with (
        Camera(source, health, stall_timeout_s=2.0) as camera,
        VisionDepositDetector(camera, VisionDetectorConfig(settle_s=0.3, clear_s=0.2)) as detector,
    ):
        kinds = []
        labels = []
        while len(kinds) < 6:
            event = detector.next_event(timeout_s=5.0)
            assert event is not None, f"no deposit event after {kinds}"
            kinds.append(event.kind)
            if event.kind is SETTLED:
                latest = camera.latest()
                assert latest is not None and latest.scene is not None
                labels.append(latest.scene.label)
    assert kinds == [ARRIVED, SETTLED, REMOVED] * 2
    assert labels == ["cardboard", "glass"]


def beam(pin_factory: MockFactory) -> InputSignal:
    # A break-beam receiver with a pull-up whose output goes low while the beam is broken.
    return InputSignal(InputPinConfig(pin=17, pull="up", active_when="low"), pin_factory=pin_factory)


def test_gpio_detector_is_debounced_and_settles_once(pin_factory: MockFactory) -> None:
    pin = pin_factory.pin(17)
    with GpioDepositDetector(beam(pin_factory), debounce_s=0.05, settle_s=0.3) as detector:
        assert detector.state is DepositState.EMPTY
        # A blip far shorter than the debounce (a fly through the beam) is ignored.
        pin.drive_low()
        pin.drive_high()
        assert detector.next_event(timeout_s=0.2) is None

        broken_at = time.monotonic()
        pin.drive_low()
        arrived = detector.next_event(timeout_s=2.0)
        settled = detector.next_event(timeout_s=2.0)
        assert arrived is not None and arrived.kind is ARRIVED
        assert settled is not None and settled.kind is SETTLED
        assert time.monotonic() - broken_at >= 0.3
        assert detector.state is DepositState.SETTLED
        assert detector.next_event(timeout_s=0.1) is None, "settled is announced once per item"

        # The item wobbling out of the beam for an instant does not count as removed.
        pin.drive_high()
        pin.drive_low()
        assert detector.next_event(timeout_s=0.15) is None
        pin.drive_high()
        removed = detector.next_event(timeout_s=2.0)
        assert removed is not None and removed.kind is REMOVED
        assert detector.state is DepositState.EMPTY


def test_gpio_detector_on_an_ultrasonic_sensor(pin_factory: MockFactory) -> None:
    echo = pin_factory.pin(24)
    trigger = pin_factory.pin(23, pin_class=MockPWMTriggerPin, echo_pin=echo, echo_time=echo_time_s(0.8))
    config = GpioDetectorConfig(
        kind="distance",
        distance=DistanceSensorConfig(echo_pin=24, trigger_pin=23, max_distance_m=1.5),
        present_below_m=0.3,
        debounce_s=0.05,
        settle_s=0.2,
    )
    detector = build_detector(
        DetectorConfig(kind="gpio", gpio=config), frames=NO_FRAMES, pin_factory=pin_factory
    )
    assert isinstance(detector, GpioDepositDetector)
    with detector:
        assert detector.next_event(timeout_s=1.0) is None, "nothing within 0.3 m yet"
        trigger.echo_time = echo_time_s(0.05)  # an item 5 cm under the sensor
        kinds = [event.kind for _ in range(2) if (event := detector.next_event(timeout_s=5.0))]
        assert kinds == [ARRIVED, SETTLED]


def test_build_detector_from_config(pin_factory: MockFactory) -> None:
    assert build_detector(DetectorConfig(kind="none"), frames=NO_FRAMES, pin_factory=pin_factory) is None
    vision = build_detector(DetectorConfig(kind="vision"), frames=NO_FRAMES, pin_factory=pin_factory)
    assert isinstance(vision, VisionDepositDetector)
    gpio = GpioDetectorConfig(kind="digital", input=InputPinConfig(pin="GPIO22"))
    detector = build_detector(
        DetectorConfig(kind="gpio", gpio=gpio), frames=NO_FRAMES, pin_factory=pin_factory
    )
    assert isinstance(detector, GpioDepositDetector)
    with detector:
        pin_factory.pin(22).drive_low()
        wait_until(lambda: detector.state is not DepositState.EMPTY, what="the input to count")


def test_gpio_detector_on_a_pir_motion_sensor(pin_factory: MockFactory) -> None:
    pir = pin_factory.pin(4)
    config = GpioDetectorConfig(
        kind="motion",
        input=InputPinConfig(pin=4, pull="down", active_when="high"),
        debounce_s=0.05,
        settle_s=0.2,
    )
    detector = build_detector(
        DetectorConfig(kind="gpio", gpio=config), frames=NO_FRAMES, pin_factory=pin_factory
    )
    assert detector is not None
    with detector:
        pir.drive_high()
        kinds = [event.kind for _ in range(2) if (event := detector.next_event(timeout_s=5.0))]
        assert kinds == [ARRIVED, SETTLED]
        pir.drive_low()
        removed = detector.next_event(timeout_s=5.0)
        assert removed is not None and removed.kind is REMOVED
