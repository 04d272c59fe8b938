"""gpiozero plumbing shared by the deposit detector and the sorter: the pin factory and digital inputs.

Every device is given its pin factory explicitly, built once from `gpio.pin_factory`, so the demo and the
tests run the real gpiozero device classes on simulated pins (`mock`) and a Pi 5 uses `lgpio`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from gpiozero import DigitalInputDevice, MotionSensor
from gpiozero.pins.mock import MockFactory, MockPWMPin

from recyclex_edge.config.gpio import InputPinConfig
from recyclex_edge.errors import RecycleXError

log = logging.getLogger(__name__)

_FACTORIES = {
    "lgpio": ("gpiozero.pins.lgpio", "LGPIOFactory"),
    "rpigpio": ("gpiozero.pins.rpigpio", "RPiGPIOFactory"),
    "pigpio": ("gpiozero.pins.pigpio", "PiGPIOFactory"),
    "native": ("gpiozero.pins.native", "NativeFactory"),
}


class GpioError(RecycleXError):
    """GPIO cannot be used: no /dev/gpiochip, a busy pin, a missing pin library."""


def make_pin_factory(name: str) -> Any:
    """The gpiozero pin factory for `gpio.pin_factory`; None means gpiozero's own default choice.

    'mock' uses MockPWMPin so that servos work on simulated pins.

    >>> factory = make_pin_factory("mock")
    """
    if name == "default":
        return None
    if name == "mock":
        return MockFactory(pin_class=MockPWMPin)
    module_name, class_name = _FACTORIES[name]
    try:
        module = __import__(module_name, fromlist=[class_name])
        return getattr(module, class_name)()
    except Exception as error:  # gpiozero raises ImportError, OSError, PinFactoryFallback, ...
        raise GpioError(
            f"gpio.pin_factory {name!r} cannot be used here: {error}; use 'mock' on a machine without GPIO"
        ) from error


class InputSignal:
    """One digital input with the meaning the config gives it: `is_on` is true when the line is 'on'.

    gpiozero ties the active level to the pull resistor; the config states both independently (a sensor
    that pulls its line high when triggered, on a pin with a pull-up, say), so the inversion lives here.
    `motion=True` uses MotionSensor, which smooths a PIR's noisy output.

    >>> with InputSignal(InputPinConfig(pin=17), pin_factory=factory) as hatch:
    ...     hatch.when_changed = lambda on: print("closed" if on else "open")
    """

    def __init__(self, config: InputPinConfig, *, pin_factory: Any, motion: bool = False) -> None:
        pull_up = {"up": True, "down": False, "none": None}[config.pull]
        wants_high = config.active_when == "high"
        active_state = wants_high if pull_up is None else None
        # With a pull resistor gpiozero makes 'active' the level opposite the pull.
        self._invert = pull_up is not None and pull_up == wants_high
        device_class = MotionSensor if motion else DigitalInputDevice
        self.when_changed: Callable[[bool], None] | None = None
        try:
            self._device = device_class(
                config.pin, pull_up=pull_up, active_state=active_state, pin_factory=pin_factory
            )
        except Exception as error:  # gpiozero's pin errors share no base class with OSError
            raise GpioError(f"cannot open input pin {config.pin}: {error}") from error
        self._device.when_activated = self._changed
        self._device.when_deactivated = self._changed

    @property
    def is_on(self) -> bool:
        return bool(self._device.is_active) != self._invert

    def _changed(self) -> None:
        callback = self.when_changed
        if callback is not None:
            callback(self.is_on)

    def close(self) -> None:
        self._device.close()

    def __enter__(self) -> InputSignal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
