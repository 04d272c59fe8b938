from __future__ import annotations

from typing import Literal

from pydantic import Field

from recyclex_edge.config.base import Section


class GpioConfig(Section):
    """Which gpiozero pin factory drives the actuators and sensors."""

    pin_factory: Literal["default", "lgpio", "rpigpio", "pigpio", "native", "mock"] = Field(
        "default",
        description="'lgpio' on a Raspberry Pi 5; 'mock' simulates pins (demo, tests); 'default' lets gpiozero pick.",
    )
