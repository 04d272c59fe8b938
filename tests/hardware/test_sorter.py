"""The sorter on gpiozero's mock pins: what each pin did, read back from the pins themselves."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero import OutputDevice
from gpiozero.pins.mock import MockFactory, MockPWMPin

from recyclex_edge.config.sorter import SorterConfig
from recyclex_edge.gpio import make_pin_factory
from recyclex_edge.health import HealthRegistry, Status
from recyclex_edge.sorter import COUNTS_FILE, Sorter, SorterError, SortOutcome, SortResult
from tests.hardware.conftest import MockPWMTriggerPin, echo_time_s, wait_until

SERVO_PIN = 18
RELAYS = {"cardboard": 5, "paper": 6, "plastic": 13, "metal": 19, "glass": 26, "trash": 21}
ANGLES = {"cardboard": -75.0, "paper": -45.0, "plastic": -15.0, "metal": 15.0, "glass": 45.0, "trash": 75.0}
INTERLOCK_PIN, HOME_PIN = 17, 27
MOVE_S, HOLD_S, RETURN_S = 0.05, 0.15, 0.05


def duty(angle_deg: float) -> float:
    """The PWM duty cycle an AngularServo (-90..90 deg over 1-2 ms pulses, 20 ms frames) uses for an angle."""
    pulse_ms = 1.0 + (angle_deg + 90) / 180 * 1.0
    return round(pulse_ms / 20.0, 6)


HOME = duty(0.0)
# An ultrasonic sensor 1.2 m above the floor of its bin, which counts as full 0.3 m below the sensor.
FILL_SENSOR = {
    "echo_pin": 24,
    "trigger_pin": 23,
    "max_distance_m": 1.5,
    "empty_distance_m": 1.2,
    "full_distance_m": 0.3,
}


def sorter_config(**changes: Any) -> SorterConfig:
    settings: dict[str, Any] = {
        "bins": {name: {"angle_deg": ANGLES[name], "relay_pin": RELAYS[name]} for name in ANGLES},
        "residual_bin": "trash",
        "move_s": MOVE_S,
        "hold_s": HOLD_S,
        "return_s": RETURN_S,
    }
    settings.update(changes)
    return SorterConfig.model_validate(settings)


@pytest.fixture
def make_sorter(pin_factory: MockFactory, tmp_path: Path, health: HealthRegistry) -> Iterator[Any]:
    made: list[Sorter] = []

    def make(config: SorterConfig | None = None) -> Sorter:
        sorter = Sorter(
            config or sorter_config(), state_dir=tmp_path / "state", health=health, pin_factory=pin_factory
        )
        made.append(sorter)
        return sorter

    yield make
    for sorter in made:
        sorter.close()


def states(factory: MockFactory, pin: int) -> list[float]:
    """The levels a pin went through (servo: duty cycle, relays: 0/1), without the timestamps."""
    return [round(float(state.state), 6) for state in factory.pin(pin).states]


def sort_in_background(sorter: Sorter, category: str) -> tuple[threading.Thread, list[SortResult]]:
    results: list[SortResult] = []
    thread = threading.Thread(target=lambda: results.append(sorter.sort(category)), name="test-sort")
    thread.start()
    return thread, results


@pytest.mark.parametrize("category", list(ANGLES))
def test_each_category_moves_its_servo_angle_and_its_flap(
    category: str, make_sorter: Any, pin_factory: MockFactory, health: HealthRegistry
) -> None:
    sorter = make_sorter()
    # Start-up: home, then detached (no pulses while idle); every relay off.
    assert states(pin_factory, SERVO_PIN) == [0.0, pytest.approx(HOME), 0.0]
    for pin in RELAYS.values():
        pin_factory.pin(pin).clear_states()
    pin_factory.pin(SERVO_PIN).clear_states()

    result = sorter.sort(category)

    assert result.outcome is SortOutcome.SORTED and result.bin == category and result.reason == ""
    # Target angle, back home, detached.
    assert states(pin_factory, SERVO_PIN) == [
        0.0,
        pytest.approx(duty(ANGLES[category])),
        pytest.approx(HOME),
        0.0,
    ]
    # Only this bin's flap opened, once, and for at least hold_s.
    relay = pin_factory.pin(RELAYS[category])
    assert states(pin_factory, RELAYS[category]) == [0.0, 1.0, 0.0]
    assert relay.states[2].timestamp >= HOLD_S * 0.95
    # The flap opened only after the diverter had had move_s to get there.
    assert relay.states[1].timestamp >= MOVE_S * 0.95
    for other, pin in RELAYS.items():
        if other != category:
            assert states(pin_factory, pin) == [0.0], f"relay of {other} must not move"
    assert result.actuated_at_s is not None and result.finished_at_s - result.actuated_at_s >= MOVE_S + HOLD_S
    assert health.snapshot()["sorter"].status is Status.OK


def test_uncertain_and_unknown_go_to_the_residual_bin(make_sorter: Any, pin_factory: MockFactory) -> None:
    sorter = make_sorter()
    for category in ("uncertain", "battery"):
        pin_factory.pin(SERVO_PIN).clear_states()
        result = sorter.sort(category)
        assert result.outcome is SortOutcome.SORTED
        assert result.bin == "trash" and category in result.reason
        assert pytest.approx(duty(ANGLES["trash"])) in states(pin_factory, SERVO_PIN)
    assert states(pin_factory, RELAYS["trash"]) == [0.0, 1.0, 0.0, 1.0, 0.0]
    assert sorter.counts.categories == {"uncertain": 1, "battery": 1}
    assert sorter.unrouted(["glass", "battery"]) == ["battery"]
    assert sorter.counts.bins == {"trash": 2}


def interlocked(**changes: Any) -> SorterConfig:
    # Hatch switch to ground with a pull-up: low (closed) is 'on'; open or unplugged reads high.
    return sorter_config(interlock={"pin": INTERLOCK_PIN, "pull": "up", "active_when": "low"}, **changes)


def test_nothing_moves_while_the_hatch_is_open(
    make_sorter: Any, pin_factory: MockFactory, health: HealthRegistry
) -> None:
    hatch = pin_factory.pin(INTERLOCK_PIN)
    sorter = make_sorter(interlocked())  # the pull-up leaves the line high: open
    assert sorter.hatch_open
    # Not even homing at start-up: the servo never got a pulse.
    assert states(pin_factory, SERVO_PIN) == [0.0]

    result = sorter.sort("glass")
    assert result.outcome is SortOutcome.BLOCKED and result.actuated_at_s is None
    assert states(pin_factory, SERVO_PIN) == [0.0]
    assert all(states(pin_factory, pin) == [0.0] for pin in RELAYS.values())
    assert health.snapshot()["sorter"].status is Status.DEGRADED
    assert "hatch open" in health.snapshot()["sorter"].detail

    hatch.drive_low()  # closed
    assert health.snapshot()["sorter"].status is Status.OK
    result = sorter.sort("glass")
    assert result.outcome is SortOutcome.SORTED
    # It homed first (it had never been home), then sorted.
    assert states(pin_factory, SERVO_PIN) == [
        0.0, pytest.approx(HOME), 0.0, pytest.approx(duty(45.0)), pytest.approx(HOME), 0.0,
    ]  # fmt: skip


def test_hatch_opening_mid_sort_stops_everything_where_it_is(
    make_sorter: Any, pin_factory: MockFactory
) -> None:
    hatch = pin_factory.pin(INTERLOCK_PIN)
    sorter = make_sorter(interlocked(hold_s=5.0))
    hatch.drive_low()  # closed (after the device set its pull-up, which reads open)
    pin_factory.pin(SERVO_PIN).clear_states()
    glass_relay = pin_factory.pin(RELAYS["glass"])

    thread, results = sort_in_background(sorter, "glass")
    wait_until(lambda: glass_relay.state, what="the glass flap to open")
    hatch.drive_high()  # someone opens the hatch
    thread.join(timeout=2.0)

    assert results[0].outcome is SortOutcome.BLOCKED
    assert not glass_relay.state
    # Homed first (the hatch read open at start), then toward glass; then detached where it was: no move
    # back home with the hatch open.
    assert states(pin_factory, SERVO_PIN) == [0.0, pytest.approx(HOME), 0.0, pytest.approx(duty(45.0)), 0.0]
    assert sorter.counts.bins == {}


def jam_config() -> SorterConfig:
    # A home position switch to ground, closed ('on', low) while the diverter is home.
    return sorter_config(
        home_switch={"pin": HOME_PIN, "pull": "up", "active_when": "low"}, home_timeout_s=0.2
    )


def test_diverter_not_getting_home_is_a_jam_and_stops_sorting(
    make_sorter: Any, pin_factory: MockFactory, health: HealthRegistry
) -> None:
    home = pin_factory.pin(HOME_PIN)
    sorter = make_sorter(jam_config())
    home.drive_low()  # at home (after the device set its pull-up)
    assert sorter.sort("metal").outcome is SortOutcome.SORTED

    # The diverter leaves home for the next item and never makes it back (a bottle wedged in the chute).
    metal_relay = pin_factory.pin(RELAYS["metal"])
    thread, results = sort_in_background(sorter, "metal")
    wait_until(lambda: metal_relay.state, what="the metal flap to open")
    home.drive_high()
    thread.join(timeout=3.0)

    assert results[0].outcome is SortOutcome.JAMMED
    assert sorter.jammed
    assert health.snapshot()["sorter"].status is Status.FAILING
    assert "jam" in health.snapshot()["sorter"].detail
    assert float(pin_factory.pin(SERVO_PIN).state) == 0.0, "a jammed servo is not left pushing"
    assert all(not pin_factory.pin(pin).state for pin in RELAYS.values())

    # Jammed: the next item does not move anything.
    pin_factory.pin(SERVO_PIN).clear_states()
    assert sorter.sort("glass").outcome is SortOutcome.JAMMED
    assert states(pin_factory, SERVO_PIN) == [0.0]
    assert sorter.clear_jam() is False, "still not home: the jam stays"

    home.drive_low()  # a technician freed the chute
    assert sorter.clear_jam() is True
    assert health.snapshot()["sorter"].status is Status.OK
    assert sorter.sort("glass").outcome is SortOutcome.SORTED
    assert sorter.counts.bins == {"metal": 1, "glass": 1}


def test_dry_run_logs_and_drives_no_pin(
    make_sorter: Any, pin_factory: MockFactory, caplog: pytest.LogCaptureFixture, health: HealthRegistry
) -> None:
    sorter = make_sorter(sorter_config(dry_run=True, move_s=0.0, hold_s=0.01, return_s=0.0))
    with caplog.at_level(logging.INFO, logger="recyclex_edge.sorter"):
        result = sorter.sort("paper")
    assert result.outcome is SortOutcome.DRY_RUN and result.bin == "paper"
    assert "dry run: paper -> bin paper" in caplog.text
    assert not pin_factory.pins, "dry run must not open a single pin"
    assert sorter.counts.bins == {"paper": 1}
    assert "dry run" in health.snapshot()["sorter"].detail


def test_a_full_bin_sends_its_items_to_the_residual_bin(
    make_sorter: Any, pin_factory: MockFactory, health: HealthRegistry
) -> None:
    echo = pin_factory.pin(24)
    # The glass bin's sensor sees rubbish 5 cm below it: full.
    pin_factory.pin(23, pin_class=MockPWMTriggerPin, echo_pin=echo, echo_time=echo_time_s(0.05))
    bins: dict[str, Any] = {name: {"angle_deg": ANGLES[name]} for name in ANGLES}
    bins["glass"]["fill_sensor"] = FILL_SENSOR
    sorter = make_sorter(sorter_config(bins=bins))
    wait_until(lambda: sorter.fill_levels()["glass"] is not None, what="the first fill reading")
    assert sorter.fill_levels()["glass"] == pytest.approx(100.0, abs=10)

    result = sorter.sort("glass")
    assert result.outcome is SortOutcome.SORTED
    assert result.bin == "trash" and "full" in result.reason
    state = health.snapshot()["sorter"]
    assert state.status is Status.DEGRADED and "glass" in state.detail
    assert sorter.counts.categories == {"glass": 1} and sorter.counts.bins == {"trash": 1}


def test_fill_level_of_an_emptier_bin(make_sorter: Any, pin_factory: MockFactory) -> None:
    echo = pin_factory.pin(24)
    # 1.0 m to the rubbish in a bin 1.2 m deep whose 'full' mark is 0.3 m below the sensor: about 22%.
    pin_factory.pin(23, pin_class=MockPWMTriggerPin, echo_pin=echo, echo_time=echo_time_s(1.0))
    bins: dict[str, Any] = {name: {"angle_deg": ANGLES[name]} for name in ANGLES}
    bins["paper"]["fill_sensor"] = FILL_SENSOR
    sorter = make_sorter(sorter_config(bins=bins))
    wait_until(lambda: sorter.fill_levels()["paper"] is not None, what="the first fill reading")
    level = sorter.fill_levels()["paper"]
    # Mock echoes run late on a loaded machine (longer echo = farther = emptier), never early.
    assert level is not None and 0 <= level <= 25
    assert sorter.sort("paper").bin == "paper"


def test_counts_survive_a_restart(make_sorter: Any, tmp_path: Path) -> None:
    first = make_sorter(sorter_config(move_s=0.0, hold_s=0.0, return_s=0.0))
    for category in ("glass", "glass", "uncertain"):
        first.sort(category)
    first.close()

    saved = json.loads((tmp_path / "state" / COUNTS_FILE).read_text())
    assert saved == {"bins": {"glass": 2, "trash": 1}, "categories": {"glass": 2, "uncertain": 1}}
    assert not list((tmp_path / "state").glob("*.tmp")), "the temporary file is renamed into place"

    second = make_sorter(sorter_config(move_s=0.0, hold_s=0.0, return_s=0.0))
    assert second.counts.bins == {"glass": 2, "trash": 1}
    second.sort("glass")
    assert second.counts.categories["glass"] == 3


def test_abort_mid_sort_ends_at_home_with_flaps_shut(make_sorter: Any, pin_factory: MockFactory) -> None:
    sorter = make_sorter(sorter_config(hold_s=10.0))
    pin_factory.pin(SERVO_PIN).clear_states()
    relay = pin_factory.pin(RELAYS["plastic"])
    thread, results = sort_in_background(sorter, "plastic")
    wait_until(lambda: relay.state, what="the plastic flap to open")

    sorter.abort()  # what the daemon does on SIGTERM
    thread.join(timeout=2.0)
    assert not thread.is_alive(), "abort must cut the 10 s hold short"
    assert results[0].outcome is SortOutcome.ABORTED
    assert states(pin_factory, RELAYS["plastic"]) == [0.0, 1.0, 0.0]
    assert states(pin_factory, SERVO_PIN) == [0.0, pytest.approx(duty(-15.0)), pytest.approx(HOME), 0.0]
    assert sorter.counts.bins == {}, "an aborted item is not counted"


def test_close_mid_sort_leaves_the_safe_state(make_sorter: Any, pin_factory: MockFactory) -> None:
    sorter = make_sorter(sorter_config(hold_s=10.0))
    relay = pin_factory.pin(RELAYS["cardboard"])
    thread, _ = sort_in_background(sorter, "cardboard")
    wait_until(lambda: relay.state, what="the cardboard flap to open")
    sorter.close()
    thread.join(timeout=2.0)
    assert not relay.state
    servo_levels = states(pin_factory, SERVO_PIN)
    assert servo_levels[-2:] == [pytest.approx(HOME), 0.0], "home, then detached"
    assert sorter.sort("glass").outcome is SortOutcome.ABORTED, "a closed sorter refuses new items"


def test_a_pin_that_cannot_be_opened_is_reported(
    pin_factory: MockFactory, tmp_path: Path, health: HealthRegistry
) -> None:
    with OutputDevice(RELAYS["glass"], pin_factory=pin_factory), pytest.raises(SorterError, match="sorter"):
        Sorter(sorter_config(), state_dir=tmp_path, health=health, pin_factory=pin_factory)
    assert health.snapshot()["sorter"].status is Status.FAILING


def test_mock_pin_factory_from_config_and_an_unwritable_state_dir(tmp_path: Path) -> None:
    """`gpio.pin_factory: mock` drives servos; a broken state dir loses counts but never stops sorting."""
    not_a_directory = tmp_path / "state"
    not_a_directory.write_text("")
    factory = make_pin_factory("mock")
    try:
        with Sorter(
            sorter_config(move_s=0.0, hold_s=0.0, return_s=0.0),
            state_dir=not_a_directory,
            health=HealthRegistry(),
            pin_factory=factory,
        ) as sorter:
            assert sorter.sort("glass").outcome is SortOutcome.SORTED
            assert sorter.counts.bins == {"glass": 1}
    finally:
        factory.reset()


def test_flaps_only_sorter_without_a_servo(make_sorter: Any, pin_factory: MockFactory) -> None:
    """One relay per flap and no diverter: only the chosen flap opens; the residual bin may have none."""
    config = sorter_config(
        servo=None,
        bins={"glass": {"relay_pin": 23}, "paper": {"relay_pin": 24}, "trash": {}},
        relay_active_high=False,
    )
    sorter = make_sorter(config)
    # Active-low relay board: 'off' is a high level.
    assert states(pin_factory, 23) == [0.0, 1.0] and states(pin_factory, 24) == [0.0, 1.0]
    assert sorter.sort("paper").outcome is SortOutcome.SORTED
    assert states(pin_factory, 24) == [0.0, 1.0, 0.0, 1.0]
    assert states(pin_factory, 23) == [0.0, 1.0]
    result = sorter.sort("uncertain")
    assert result.outcome is SortOutcome.SORTED and result.bin == "trash"
    assert states(pin_factory, 23) == [0.0, 1.0] and states(pin_factory, 24) == [0.0, 1.0, 0.0, 1.0]
    assert SERVO_PIN not in [info.name for info in pin_factory.pins]


def test_a_hatch_opened_during_the_move_keeps_the_flap_shut(
    make_sorter: Any, pin_factory: MockFactory
) -> None:
    """The move was cut short by the hatch: the flap must not open afterwards, not even for an instant."""
    hatch = pin_factory.pin(INTERLOCK_PIN)
    sorter = make_sorter(interlocked(move_s=5.0))
    hatch.drive_low()  # closed
    pin_factory.pin(SERVO_PIN).clear_states()
    thread, results = sort_in_background(sorter, "glass")
    wait_until(
        lambda: pytest.approx(duty(45.0)) in states(pin_factory, SERVO_PIN), what="the move toward glass"
    )
    hatch.drive_high()  # opened during the 5 s move, before the flap's turn
    thread.join(timeout=2.0)

    assert results[0].outcome is SortOutcome.BLOCKED
    assert states(pin_factory, RELAYS["glass"]) == [0.0], "the glass flap never opened"
    assert all(not pin_factory.pin(pin).state for pin in RELAYS.values())


class FlakyPWMPin(MockPWMPin):
    """A pin whose driver fails once when told to (a GPIO expander's bus hiccup, say)."""

    fail_next_write = False

    def _set_state(self, value: float) -> None:
        if self.fail_next_write:
            self.fail_next_write = False
            raise OSError("GPIO write failed (simulated bus error)")
        super()._set_state(value)


def test_a_gpio_error_mid_sort_still_ends_with_every_flap_shut(
    make_sorter: Any, pin_factory: MockFactory, health: HealthRegistry
) -> None:
    """The safe state after a fault turns the relays off itself: here the sequence's own 'all flaps off'
    fails at the first relay, while the glass flap is open."""
    flaky = pin_factory.pin(RELAYS["cardboard"], pin_class=FlakyPWMPin)
    sorter = make_sorter()
    glass = pin_factory.pin(RELAYS["glass"])
    thread, results = sort_in_background(sorter, "glass")
    wait_until(lambda: glass.state, what="the glass flap to open")
    flaky.fail_next_write = True
    thread.join(timeout=2.0)

    assert results[0].outcome is SortOutcome.FAULT
    assert not glass.state, "the glass flap was closed by the safe state"
    assert all(not pin_factory.pin(pin).state for pin in RELAYS.values())
    assert health.snapshot()["sorter"].status is Status.FAILING
    assert float(pin_factory.pin(SERVO_PIN).state) == 0.0, "home and detached"
