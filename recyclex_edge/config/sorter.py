from __future__ import annotations

from pydantic import Field, model_validator

from recyclex_edge.config.base import Section
from recyclex_edge.config.gpio import DistanceSensorConfig, InputPinConfig, Pin, pin_key


class ServoConfig(Section):
    """The diverter servo (an AngularServo: pulse widths map linearly onto the angle range)."""

    pin: Pin = Field(
        18, description="The servo's signal pin (a hardware-PWM pin such as GPIO18 jitters least)."
    )
    min_angle_deg: float = Field(-90.0, ge=-360, le=360, description="Angle at the shortest pulse.")
    max_angle_deg: float = Field(90.0, ge=-360, le=360, description="Angle at the longest pulse.")
    min_pulse_width_ms: float = Field(1.0, gt=0, le=5, description="Pulse width at min_angle_deg.")
    max_pulse_width_ms: float = Field(2.0, gt=0, le=5, description="Pulse width at max_angle_deg.")
    frame_width_ms: float = Field(20.0, gt=5, le=50, description="Time between pulses (20 ms is 50 Hz).")
    home_angle_deg: float = Field(
        0.0, ge=-360, le=360, description="Rest position: chute closed, nothing diverted."
    )

    @model_validator(mode="after")
    def _ranges(self) -> ServoConfig:
        if self.min_angle_deg >= self.max_angle_deg:
            raise ValueError("min_angle_deg must be below max_angle_deg")
        if self.min_pulse_width_ms >= self.max_pulse_width_ms:
            raise ValueError("min_pulse_width_ms must be below max_pulse_width_ms")
        if self.max_pulse_width_ms >= self.frame_width_ms:
            raise ValueError("max_pulse_width_ms must be below frame_width_ms")
        if not self.min_angle_deg <= self.home_angle_deg <= self.max_angle_deg:
            raise ValueError("home_angle_deg must lie between min_angle_deg and max_angle_deg")
        return self


class FillSensorConfig(DistanceSensorConfig):
    """An ultrasonic sensor above a bin: the closer the rubbish, the fuller the bin."""

    empty_distance_m: float = Field(description="Reading with the bin empty (sensor to bin floor).")
    full_distance_m: float = Field(description="Reading at which the bin counts as 100% full.")

    @model_validator(mode="after")
    def _distances(self) -> FillSensorConfig:
        if not 0 < self.full_distance_m < self.empty_distance_m <= self.max_distance_m:
            raise ValueError("need 0 < full_distance_m < empty_distance_m <= max_distance_m")
        return self


class BinConfig(Section):
    """One output bin: where the diverter points for it, the flap that opens it, how full it is."""

    angle_deg: float | None = Field(
        None, description="Servo angle that sends items here; empty: no servo move."
    )
    relay_pin: Pin | None = Field(None, description="Relay or flap output opened for this bin; empty: none.")
    fill_sensor: FillSensorConfig | None = Field(None, description="Optional ultrasonic fill-level sensor.")


_DEFAULT_BINS = {
    "cardboard": BinConfig(angle_deg=-75),
    "paper": BinConfig(angle_deg=-45),
    "plastic": BinConfig(angle_deg=-15),
    "metal": BinConfig(angle_deg=15),
    "glass": BinConfig(angle_deg=45),
    "trash": BinConfig(angle_deg=75),
}


class SorterConfig(Section):
    """The actuators that send each item to its bin, and what keeps them safe."""

    dry_run: bool = Field(
        False, description="Log each move instead of driving any pin (no GPIO devices opened)."
    )
    servo: ServoConfig | None = Field(
        default_factory=ServoConfig, description="The diverter servo; empty when only relays/flaps are used."
    )
    relay_active_high: bool = Field(True, description="Relay boards that switch on a low level need false.")
    bins: dict[str, BinConfig] = Field(
        default_factory=lambda: dict(_DEFAULT_BINS),
        description="Bin per category (the model's labels), e.g. {glass: {angle_deg: 45, relay_pin: 23}}.",
    )
    residual_bin: str = Field(
        "trash", description="Bin for uncertain items, unknown categories and items whose own bin is full."
    )
    move_s: float = Field(0.4, ge=0, le=10, description="Time for the diverter to reach a bin's angle.")
    hold_s: float = Field(1.0, ge=0, le=30, description="Diverter held (and flap open) while the item falls.")
    return_s: float = Field(
        0.4, ge=0, le=10, description="Time to get back home before the servo is detached."
    )
    interlock: InputPinConfig | None = Field(
        None,
        description="Hatch/lid switch, 'on' when closed. Nothing moves while it reads open (or unplugged).",
    )
    home_switch: InputPinConfig | None = Field(
        None, description="Position switch, 'on' at home; not on within home_timeout_s after a sort: jammed."
    )
    home_timeout_s: float = Field(1.0, gt=0, le=30, description="How long the home switch may take to close.")
    full_percent: float = Field(90.0, gt=0, le=100, description="A bin at or above this fill level is full.")

    @model_validator(mode="after")
    def _consistent(self) -> SorterConfig:
        if not self.bins:
            raise ValueError("`bins` must name at least one bin")
        if self.residual_bin not in self.bins:
            raise ValueError(f"residual_bin {self.residual_bin!r} is not one of bins: {', '.join(self.bins)}")
        for name, bin_config in self.bins.items():
            if bin_config.angle_deg is not None:
                if self.servo is None:
                    raise ValueError(f"bins.{name}.angle_deg is set but there is no servo")
                if not self.servo.min_angle_deg <= bin_config.angle_deg <= self.servo.max_angle_deg:
                    raise ValueError(f"bins.{name}.angle_deg is outside the servo's min/max angle")
        used: dict[str, str] = {}
        for where, pin in self._pins():
            key = pin_key(pin)
            if key in used:
                raise ValueError(f"{where} uses pin {pin}, already used by {used[key]}")
            used[key] = where
        return self

    def _pins(self) -> list[tuple[str, int | str]]:
        pins: list[tuple[str, int | str]] = []
        if self.servo is not None:
            pins.append(("servo.pin", self.servo.pin))
        for name, bin_config in self.bins.items():
            if bin_config.relay_pin is not None:
                pins.append((f"bins.{name}.relay_pin", bin_config.relay_pin))
            if bin_config.fill_sensor is not None:
                pins.append((f"bins.{name}.fill_sensor.echo_pin", bin_config.fill_sensor.echo_pin))
                pins.append((f"bins.{name}.fill_sensor.trigger_pin", bin_config.fill_sensor.trigger_pin))
        for where, switch in (("interlock", self.interlock), ("home_switch", self.home_switch)):
            if switch is not None:
                pins.append((f"{where}.pin", switch.pin))
        return pins
