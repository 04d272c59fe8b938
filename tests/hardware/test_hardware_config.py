"""The camera, detector, sorter and gpio config sections: defaults that validate without hardware, pins
checked, and inconsistent sorter settings refused with a reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from recyclex_edge.config import Config, load_config
from recyclex_edge.config.detector import DetectorConfig
from recyclex_edge.config.gpio import InputPinConfig
from recyclex_edge.config.sorter import SorterConfig
from recyclex_edge.errors import ConfigError


def test_defaults_validate_on_a_machine_without_hardware() -> None:
    config = load_config(None, environ={})
    assert config.camera.source == "none"
    assert config.detector.kind == "vision"
    assert config.sorter.residual_bin in config.sorter.bins
    assert config.gpio.pin_factory == "default"


@pytest.mark.parametrize("pin", [0, 27, "17", "GPIO4", "bcm22", "BOARD11", "J8:40"])
def test_pins_that_are_accepted(pin: int | str) -> None:
    InputPinConfig(pin=pin)


@pytest.mark.parametrize("pin", [-1, 28, 40, "GPIO28", "BOARD41", "pin7", ""])
def test_pins_that_are_refused(pin: int | str) -> None:
    with pytest.raises(ValidationError, match="pin"):
        InputPinConfig(pin=pin)


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"residual_bin": "landfill"}, "residual_bin 'landfill' is not one of bins"),
        ({"bins": {"glass": {"angle_deg": 120}, "trash": {}}}, "outside the servo's min/max angle"),
        ({"servo": None, "bins": {"glass": {"angle_deg": 10}, "trash": {}}}, "there is no servo"),
        (
            {"bins": {"glass": {"relay_pin": 18}, "trash": {}}},
            "bins.glass.relay_pin uses pin 18, already used by servo.pin",
        ),
        (
            {"interlock": {"pin": "GPIO5"}, "bins": {"glass": {"relay_pin": 5}, "trash": {}}},
            "interlock.pin uses pin GPIO5, already used by bins.glass.relay_pin",
        ),
        ({"servo": {"home_angle_deg": 100}}, "home_angle_deg must lie between"),
        (
            {
                "bins": {
                    "glass": {
                        "fill_sensor": {
                            "echo_pin": 24,
                            "trigger_pin": 23,
                            "empty_distance_m": 0.2,
                            "full_distance_m": 0.5,
                        }
                    },
                    "trash": {},
                }
            },
            "full_distance_m < empty_distance_m",
        ),
    ],
)
def test_inconsistent_sorter_settings_are_refused(settings: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        SorterConfig.model_validate(settings)


def test_a_gpio_detector_needs_its_sensor() -> None:
    with pytest.raises(ValidationError, match="kind 'gpio' needs a `gpio` section"):
        DetectorConfig(kind="gpio")
    with pytest.raises(ValidationError, match="kind 'distance' needs `distance`"):
        DetectorConfig.model_validate({"kind": "gpio", "gpio": {"kind": "distance"}})


def test_sections_load_from_yaml_with_located_errors(tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_text(
        "camera:\n  source: replay:/srv/photos\n  replay:\n    order: shuffled\n"
        "detector:\n  kind: gpio\n  gpio:\n    kind: digital\n"
        "    input: {pin: GPIO17, pull: up, active_when: low}\n"
        "sorter:\n  servo: null\n  bins:\n    glass: {relay_pin: 23}\n    trash: {relay_pin: 24}\n"
    )
    config = load_config(path, environ={})
    assert isinstance(config, Config)
    assert config.detector.gpio is not None and config.detector.gpio.input == InputPinConfig(pin="GPIO17")
    assert config.sorter.servo is None and config.sorter.bins["glass"].relay_pin == 23

    path.write_text("sorter:\n  bins:\n    glass: {relay_pin: 99}\n    trash: {}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert any("sorter.bins.glass.relay_pin" in str(problem) for problem in caught.value.problems)
