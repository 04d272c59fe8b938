from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from recyclex_edge.config.base import Section
from recyclex_edge.config.gpio import DistanceSensorConfig, InputPinConfig


class VisionDetectorConfig(Section):
    """Background subtraction on the camera's small grey stream."""

    pixel_threshold: int = Field(
        25, ge=1, le=255, description="A pixel differs when its grey level moved by more than this."
    )
    present_fraction: float = Field(
        0.03,
        gt=0,
        lt=1,
        description="Share of pixels differing from the empty scene that means 'an item is there'.",
    )
    clear_fraction: float = Field(
        0.01, gt=0, lt=1, description="Below this share the scene counts as empty again (hysteresis)."
    )
    motion_fraction: float = Field(
        0.005,
        gt=0,
        lt=1,
        description="Share of pixels changing between frames above which the item is moving.",
    )
    settle_s: float = Field(
        0.5, gt=0, le=30, description="The item must stay still this long to count as settled."
    )
    clear_s: float = Field(
        0.3, ge=0, le=30, description="The scene must stay empty this long to count as cleared."
    )
    relearn_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description=(
            "A scene changed but perfectly still this long becomes the new empty scene (a light change, "
            "a stain, something stuck), so detection never locks up."
        ),
    )
    background_alpha: float = Field(
        0.05,
        gt=0,
        le=1,
        description="How fast the empty-scene background follows slow light changes (per frame).",
    )

    @model_validator(mode="after")
    def _hysteresis(self) -> VisionDetectorConfig:
        if self.clear_fraction >= self.present_fraction:
            raise ValueError("clear_fraction must be below present_fraction")
        return self


class GpioDetectorConfig(Section):
    """A sensor that says 'something is in the chute': break-beam, switch, PIR or ultrasonic."""

    kind: Literal["digital", "motion", "distance"] = Field(
        "digital",
        description=(
            "'digital': break-beam, button, reed or line sensor on one pin; 'motion': a PIR (MotionSensor); "
            "'distance': an ultrasonic sensor, an item is there when closer than present_below_m."
        ),
    )
    input: InputPinConfig | None = Field(
        None, description="The pin for 'digital' and 'motion'; 'on' means an item is there."
    )
    distance: DistanceSensorConfig | None = Field(None, description="The sensor for 'distance'.")
    present_below_m: float = Field(
        0.15, gt=0, le=4, description="'distance': an item is there when the reading is closer than this."
    )
    debounce_s: float = Field(
        0.05, ge=0, le=5, description="A level must hold this long to count; shorter blips are ignored."
    )
    settle_s: float = Field(
        0.5, ge=0, le=30, description="After arriving, the item must stay this long to count as settled."
    )

    @model_validator(mode="after")
    def _has_its_sensor(self) -> GpioDetectorConfig:
        if self.kind == "distance" and self.distance is None:
            raise ValueError("kind 'distance' needs `distance` (echo_pin, trigger_pin)")
        if self.kind != "distance" and self.input is None:
            raise ValueError(f"kind {self.kind!r} needs `input` (pin, pull, active_when)")
        return self


class DetectorConfig(Section):
    """How the bin notices that an item was deposited and has come to rest."""

    kind: Literal["vision", "gpio", "none"] = Field(
        "vision", description="'vision' watches the camera; 'gpio' a sensor; 'none' never detects (API only)."
    )
    vision: VisionDetectorConfig = Field(
        default_factory=VisionDetectorConfig, description="Settings of kind 'vision'."
    )
    gpio: GpioDetectorConfig | None = Field(None, description="Settings of kind 'gpio' (required for it).")

    @model_validator(mode="after")
    def _gpio_given(self) -> DetectorConfig:
        if self.kind == "gpio" and self.gpio is None:
            raise ValueError(
                "kind 'gpio' needs a `gpio` section (kind, input or distance, debounce_s, settle_s)"
            )
        return self
