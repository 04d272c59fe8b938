"""The pin factory and the types every GPIO-using section shares (pins, digital inputs, distance sensors)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from recyclex_edge.config.base import Section

# Broadcom numbers 0-27 are the GPIOs on the 40-pin header of every Pi from the B+ to the Pi 5.
_BCM_MAX = 27
_NAMED_PIN = re.compile(r"^(?:(?:GPIO|BCM)(\d{1,2})|(?:BOARD|J8:)(\d{1,2}))$", re.IGNORECASE)
_HEADER_PINS = 40


def _check_pin(value: int | str) -> int | str:
    """BCM numbers as ints (17), or gpiozero's names ('GPIO17', 'BCM17', 'BOARD11', 'J8:11')."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int):
        if not 0 <= value <= _BCM_MAX:
            raise ValueError(f"BCM pin numbers are 0-{_BCM_MAX}")
        return value
    match = _NAMED_PIN.match(value.strip())
    if match is None:
        raise ValueError("a pin is a BCM number 0-27 or a name like 'GPIO17', 'BCM17', 'BOARD11' or 'J8:11'")
    bcm, header = match.groups()
    if bcm is not None and int(bcm) > _BCM_MAX:
        raise ValueError(f"BCM pin numbers are 0-{_BCM_MAX}")
    if header is not None and not 1 <= int(header) <= _HEADER_PINS:
        raise ValueError(f"header pins are 1-{_HEADER_PINS}")
    return value.strip().upper()


Pin = Annotated[int | str, AfterValidator(_check_pin)]


class InputPinConfig(Section):
    """One digital input (switch, break-beam receiver, sensor output) and which level means 'on'."""

    pin: Pin = Field(description="BCM number (17) or name ('GPIO17', 'BOARD11').")
    pull: Literal["up", "down", "none"] = Field(
        "up", description="Internal pull resistor; 'none' when the circuit drives the line itself."
    )
    active_when: Literal["high", "low"] = Field(
        "low",
        description="The level that means 'on' (with pull 'up', a switch to ground reads 'low' when closed).",
    )


class DistanceSensorConfig(Section):
    """An HC-SR04-style ultrasonic sensor (through a voltage divider on echo)."""

    echo_pin: Pin = Field(description="Pin wired to ECHO (through the divider).")
    trigger_pin: Pin = Field(description="Pin wired to TRIG.")
    max_distance_m: float = Field(
        2.0,
        gt=0,
        le=4,
        description="Readings are clipped here; keep it just above the longest real distance.",
    )


class GpioConfig(Section):
    """Which gpiozero pin factory drives the actuators and sensors."""

    pin_factory: Literal["default", "lgpio", "rpigpio", "pigpio", "native", "mock"] = Field(
        "default",
        description=(
            "'lgpio' on a Raspberry Pi 5; 'mock' simulates pins (demo, tests); 'default' lets gpiozero pick."
        ),
    )


def pin_key(pin: int | str) -> str:
    """A comparable spelling of a pin, so 17, '17', 'GPIO17' and 'BCM17' are seen as the same one."""
    if isinstance(pin, int):
        return f"GPIO{pin}"
    match = _NAMED_PIN.match(pin)
    if match is not None and match.group(1) is not None:
        return f"GPIO{int(match.group(1))}"
    return pin
