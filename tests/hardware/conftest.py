"""Hardware-stage fixtures: gpiozero's MockFactory pins (reset after every test) and waiting helpers.

Tests read pin states back from the mock pins; they never mock our own classes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPWMPin, MockTriggerPin

from recyclex_edge.health import HealthRegistry
from tests.conftest import val_photos


class MockPWMTriggerPin(MockTriggerPin, MockPWMPin):
    """An ultrasonic trigger pin on a factory whose pins are all PWM-capable (so servos work too).

    MockFactory refuses to mix PWM and non-PWM pins; this is gpiozero's own MockTriggerPin (it answers
    each trigger pulse with an echo pulse of `echo_time`), made PWM-capable.
    """


def echo_time_s(distance_m: float) -> float:
    """The echo pulse an HC-SR04 gives for an object `distance_m` away."""
    return 2 * distance_m / 343.26


@pytest.fixture
def pin_factory() -> Iterator[MockFactory]:
    factory = MockFactory(pin_class=MockPWMPin)
    Device.pin_factory = factory
    yield factory
    factory.reset()
    Device.pin_factory = None


@pytest.fixture
def health() -> HealthRegistry:
    return HealthRegistry()


def wait_until(condition: Callable[[], object], timeout_s: float = 5.0, what: str = "condition") -> None:
    """Poll `condition` until true; fail with `what` after `timeout_s` (generous: the machine is shared)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.005)


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    """A replay folder of real val photos, one per label for the first three labels (symlinks, not copies)."""
    folder = tmp_path / "photos"
    for label in ("cardboard", "glass", "metal"):
        (folder / label).mkdir(parents=True)
        photo = val_photos(label)[0]
        (folder / label / photo.name).symlink_to(photo)
    return folder
