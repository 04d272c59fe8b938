"""The sorter: the servo and flaps that send each item to its bin, and everything that keeps them safe.

One sequence per item: move the diverter to the bin's angle, open the bin's flap (relay), hold while the
item falls, close the flap, return home, then detach the servo (no pulses) so it does not jitter or heat
up while idle. Every gpiozero device is created once, at start: creating and closing PWM devices per item
leaks threads in some pin factories.

Safe state means: relays off, diverter home, servo detached. It is applied at start, at close, after any
error, and when a sequence is aborted (SIGTERM mid-sort). With a hatch interlock, nothing moves while the
hatch reads open: the relays go off and the servo is detached where it is, and it homes before the next
item once the hatch is closed again. With a home switch, a diverter that does not get home is a jam:
sorting stops until `clear_jam()` sees it home again.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from recyclex_edge.config.sorter import FillSensorConfig, SorterConfig
from recyclex_edge.errors import RecycleXError
from recyclex_edge.gpio import InputSignal
from recyclex_edge.health import HealthRegistry, Status

log = logging.getLogger(__name__)

COMPONENT = "sorter"
COUNTS_FILE = "sorter_counts.json"


class SorterError(RecycleXError):
    """The sorter cannot start (its GPIO devices cannot be opened)."""


class SortOutcome(StrEnum):
    SORTED = "sorted"  # the sequence ran to the end
    DRY_RUN = "dry_run"  # logged, nothing moved (sorter.dry_run)
    BLOCKED = "blocked"  # the hatch interlock reads open: nothing moved, or the move was cut short
    JAMMED = "jammed"  # the diverter is (or just got) stuck; nothing moves until the jam is cleared
    ABORTED = "aborted"  # abort() or close() interrupted the sequence; the diverter went home
    FAULT = "fault"  # a GPIO error mid-sequence; safe state applied, details in the log


@dataclass(frozen=True)
class SortResult:
    """What happened to one item. `bin` is where it was sent, which is the residual bin when the
    category has no bin of its own (e.g. 'uncertain') or its bin is full; `reason` says why."""

    category: str
    bin: str
    outcome: SortOutcome
    reason: str
    actuated_at_s: float | None  # time.monotonic() of the first actuator command, None if nothing moved
    finished_at_s: float


class FillLevel:
    """An ultrasonic sensor above a bin, as percent full: 0 at `empty_distance_m`, 100 at `full_distance_m`.

    >>> with FillLevel(DistanceSensor(echo=24, trigger=23, max_distance=1.2), 1.0, 0.2) as glass:
    ...     glass.percent()
    """

    def __init__(self, sensor: Any, empty_distance_m: float, full_distance_m: float) -> None:
        self._sensor = sensor
        self.empty_distance_m = empty_distance_m
        self.full_distance_m = full_distance_m

    @classmethod
    def from_config(cls, config: FillSensorConfig, pin_factory: Any) -> FillLevel:
        from gpiozero import DistanceSensor, PWMSoftwareFallback

        with warnings.catch_warnings():
            # gpiozero suggests pigpio for accuracy; centimetres are plenty for a fill level.
            warnings.simplefilter("ignore", PWMSoftwareFallback)
            sensor = DistanceSensor(
                echo=config.echo_pin,
                trigger=config.trigger_pin,
                max_distance=config.max_distance_m,
                pin_factory=pin_factory,
            )
        return cls(sensor, config.empty_distance_m, config.full_distance_m)

    def percent(self) -> float | None:
        """Fill level 0-100, or None while the sensor has no reading yet (or none at all: unplugged)."""
        # gpiozero's `distance` blocks until its median queue has filled, forever if no echo ever comes;
        # its queue's `full` event is the only way to ask without blocking.
        if not self._sensor._queue.full.is_set():
            return None
        distance_m = float(self._sensor.distance)
        span_m = self.empty_distance_m - self.full_distance_m
        return max(0.0, min(100.0, 100.0 * (self.empty_distance_m - distance_m) / span_m))

    def close(self) -> None:
        # gpiozero's DistanceSensor.close() drops its trigger pin before it stops the thread that
        # pulses it, and that thread then dies with an AttributeError: stop the thread first.
        queue = self._sensor._queue
        if queue.is_alive():
            queue.stop()
        self._sensor.close()

    def __enter__(self) -> FillLevel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class SortCounts:
    """Items per category and per bin, kept in the state directory so they survive restarts.

    Written atomically (temp file, fsync, rename, fsync of the directory): a power cut leaves the old
    file or the new one, never half of one.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.categories: Counter[str] = Counter()
        self.bins: Counter[str] = Counter()
        try:
            data = json.loads(path.read_text())
            self.categories.update({str(k): int(v) for k, v in data.get("categories", {}).items()})
            self.bins.update({str(k): int(v) for k, v in data.get("bins", {}).items()})
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError, TypeError) as error:
            log.error("sort counts in %s are unreadable (%s); starting from zero", path, error)

    def reset(self) -> None:
        """Back to zero (a technician emptied the bins), saved at once."""
        self.categories.clear()
        self.bins.clear()
        self._save()

    def add(self, category: str, bin_name: str) -> None:
        self.categories[category] += 1
        self.bins[bin_name] += 1
        self._save()

    def _save(self) -> None:
        data = {"categories": dict(self.categories), "bins": dict(self.bins)}
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with temporary.open("w") as file:
                json.dump(data, file, sort_keys=True)
                file.flush()
                os.fsync(file.fileno())
            temporary.replace(self.path)
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as error:
            # Losing a count is better than stopping the bin; the log says the state dir needs a look.
            log.error("cannot save sort counts to %s: %s", self.path, error)


class Sorter:
    """Sends items to bins with the servo and relays `SorterConfig` describes.

    `sort()` blocks for the whole sequence (move_s + hold_s + return_s) and runs one item at a time; call
    it from a worker thread. It never raises for hardware conditions: the result says what happened.

    >>> with Sorter(config.sorter, state_dir=Path("/var/lib/recyclex-edge"), health=health,
    ...             pin_factory=make_pin_factory("mock")) as sorter:
    ...     result = sorter.sort("glass")      # or "uncertain": goes to the residual bin
    """

    def __init__(
        self, config: SorterConfig, *, state_dir: Path, health: HealthRegistry, pin_factory: Any = None
    ) -> None:
        self.config = config
        self._health = health
        self.counts = SortCounts(state_dir / COUNTS_FILE)
        # Since start, for /metrics: sequences that drove the actuators, per bin, and jams detected.
        # Unlike `counts` they never reset (Prometheus counters); test moves count as moves.
        self.moves: Counter[str] = Counter()
        self.jams = 0
        self._sorting = threading.Lock()
        self._abort = threading.Event()
        self._closed = False
        self._jammed = False
        self._needs_home = True
        self._servo: Any = None
        self._relays: dict[str, Any] = {}
        self._fill: dict[str, FillLevel] = {}
        self._interlock: InputSignal | None = None
        self._home_switch: InputSignal | None = None
        self._hatch_open = threading.Event()
        try:
            if not config.dry_run:
                self._open_devices(pin_factory)
            with self._sorting:
                self._safe_state()
        except Exception as error:  # gpiozero's pin errors, OSError from the chip, BadPinFactory...
            self._close_devices()
            message = f"sorter GPIO cannot be opened: {error}"
            health.report(COMPONENT, Status.FAILING, message)
            raise SorterError(
                f"{message}; check the pins in `sorter`, or set gpio.pin_factory: mock"
            ) from error
        self.refresh_health()

    # -- devices -------------------------------------------------------------------------------------

    def _open_devices(self, pin_factory: Any) -> None:
        from gpiozero import AngularServo, OutputDevice

        config = self.config
        if config.servo is not None:
            servo = config.servo
            self._servo = AngularServo(
                servo.pin,
                initial_angle=None,  # no pulse until we know the hatch is closed
                min_angle=servo.min_angle_deg,
                max_angle=servo.max_angle_deg,
                min_pulse_width=servo.min_pulse_width_ms / 1000,
                max_pulse_width=servo.max_pulse_width_ms / 1000,
                frame_width=servo.frame_width_ms / 1000,
                pin_factory=pin_factory,
            )
        for name, bin_config in config.bins.items():
            if bin_config.relay_pin is not None:
                self._relays[name] = OutputDevice(
                    bin_config.relay_pin,
                    active_high=config.relay_active_high,
                    initial_value=False,
                    pin_factory=pin_factory,
                )
            if bin_config.fill_sensor is not None:
                self._fill[name] = FillLevel.from_config(bin_config.fill_sensor, pin_factory)
        if config.interlock is not None:
            self._interlock = InputSignal(config.interlock, pin_factory=pin_factory)
            self._interlock.when_changed = self._on_interlock
            if not self._interlock.is_on:
                self._hatch_open.set()
        if config.home_switch is not None:
            self._home_switch = InputSignal(config.home_switch, pin_factory=pin_factory)

    def _close_devices(self) -> None:
        devices: list[Any] = [self._servo, *self._relays.values(), *self._fill.values()]
        devices += [self._interlock, self._home_switch]
        for device in devices:
            if device is not None:
                try:
                    device.close()
                except Exception:
                    log.exception("closing %r failed", device)

    def _on_interlock(self, closed: bool) -> None:
        if closed:
            self._hatch_open.clear()
            log.info("hatch closed")
        else:
            # Wakes a running sequence out of its hold, so it stops at once.
            self._hatch_open.set()
            log.warning("hatch opened: the sorter will not move until it is closed")
        self.refresh_health()

    # -- state ---------------------------------------------------------------------------------------

    @property
    def jammed(self) -> bool:
        return self._jammed

    @property
    def hatch_open(self) -> bool:
        return self._hatch_open.is_set()

    def fill_levels(self) -> dict[str, float | None]:
        """Percent full of every bin with a fill sensor (None: no reading)."""
        return {name: fill.percent() for name, fill in self._fill.items()}

    def _full_bins(self) -> dict[str, float]:
        return {
            name: level
            for name, level in self.fill_levels().items()
            if level is not None and level >= self.config.full_percent
        }

    def refresh_health(self) -> None:
        """Report the `sorter` component from the current jam, hatch and fill levels. Sorting and the
        hatch switch call it; the daemon may call it now and then so a bin filling up while idle shows."""
        if self._jammed:
            self._health.report(
                COMPONENT,
                Status.FAILING,
                "diverter did not get home (jam?): sorting stopped; clear the chute, then clear the jam",
            )
            return
        problems = []
        if self.hatch_open:
            problems.append("hatch open: not sorting until it is closed")
        full = self._full_bins()
        if full:
            problems.append(
                "full: " + ", ".join(f"{name} {level:.0f}%" for name, level in sorted(full.items()))
            )
        if problems:
            self._health.report(COMPONENT, Status.DEGRADED, "; ".join(problems))
        elif self.config.dry_run:
            self._health.report(COMPONENT, Status.OK, "dry run: moves are logged, no pin is driven")
        else:
            self._health.report(COMPONENT, Status.OK, "ready")

    def unrouted(self, labels: Iterable[str]) -> list[str]:
        """The model's labels that have no bin of their own: their items all go to the residual bin."""
        return [label for label in labels if label not in self.config.bins]

    def route(self, category: str) -> tuple[str, str]:
        """(bin, reason): the category's own bin, or the residual bin and why."""
        residual = self.config.residual_bin
        if category not in self.config.bins:
            return residual, f"no bin for {category!r}"
        level = self._fill[category].percent() if category in self._fill else None
        if category != residual and level is not None and level >= self.config.full_percent:
            return residual, f"bin {category!r} is full ({level:.0f}%)"
        return category, ""

    # -- moves ---------------------------------------------------------------------------------------

    def _relays_off(self) -> None:
        for relay in self._relays.values():
            relay.off()

    def _at_home(self) -> bool:
        return self._home_switch is None or self._home_switch.is_on

    def _wait_home(self) -> bool:
        deadline_s = time.monotonic() + self.config.home_timeout_s
        while not self._at_home():
            if time.monotonic() >= deadline_s:
                return False
            time.sleep(0.01)
        return True

    def _safe_state(self) -> None:
        """Relays off; servo home and detached, unless the hatch is open or the diverter jammed (then
        detached where it is)."""
        if self.config.dry_run:
            return
        self._relays_off()
        if self._servo is None:
            self._needs_home = False
            return
        if self.hatch_open or self._jammed:
            # Never move with the hatch open, nor push against a jam: just stop driving the servo.
            self._servo.detach()
            self._needs_home = True
            return
        assert self.config.servo is not None
        self._servo.angle = self.config.servo.home_angle_deg
        # Uninterruptible on purpose: detaching before the servo is home would leave it anywhere.
        time.sleep(self.config.return_s)
        self._servo.detach()
        self._needs_home = False

    def _hold(self, seconds: float) -> str | None:
        """Wait `seconds` unless aborted or the hatch opens; returns why it was cut short."""
        deadline_s = time.monotonic() + seconds
        while (remaining_s := deadline_s - time.monotonic()) > 0:
            if self._abort.is_set():
                return "aborted"
            if self.hatch_open:
                return "hatch opened"
            self._abort.wait(min(remaining_s, 0.02))
        return "aborted" if self._abort.is_set() else "hatch opened" if self.hatch_open else None

    def sort(self, category: str, *, count: bool = True) -> SortResult:
        """Run the sequence for one item of `category` (a label, or anything else for the residual bin).

        `count=False` runs the same sequence without counting an item: a technician's actuator test.
        """
        bin_name, reason = self.route(category)
        with self._sorting:
            self._abort.clear()
            if self._closed:
                return self._result(category, bin_name, SortOutcome.ABORTED, "sorter is closed", None)
            if self.config.dry_run:
                return self._dry_run(category, bin_name, reason, count)
            if self._jammed:
                return self._result(
                    category, bin_name, SortOutcome.JAMMED, "jammed earlier; not moving", None
                )
            if self.hatch_open:
                return self._result(category, bin_name, SortOutcome.BLOCKED, "hatch open; not moving", None)
            try:
                return self._run_sequence(category, bin_name, reason, count)
            except Exception as error:
                log.exception("sorting %s into %s failed; going to the safe state", category, bin_name)
                try:
                    self._safe_state()
                except Exception:
                    log.exception("the safe state could not be applied either")
                self._health.report(COMPONENT, Status.FAILING, f"GPIO error while sorting: {error}")
                return self._result(category, bin_name, SortOutcome.FAULT, str(error), None)

    def _run_sequence(self, category: str, bin_name: str, reason: str, count: bool) -> SortResult:
        config = self.config
        target = config.bins[bin_name]
        if self._needs_home:
            self._safe_state()
        if not self._at_home():
            return self._jam(category, bin_name, "diverter not home before moving")
        actuated_at_s = time.monotonic()
        self.moves[bin_name] += 1
        if self._servo is not None and target.angle_deg is not None:
            self._servo.angle = target.angle_deg
            interrupted = self._hold(config.move_s)
        else:
            interrupted = None
        relay = self._relays.get(bin_name)
        if relay is not None and interrupted is None:
            relay.on()
        if interrupted is None:
            interrupted = self._hold(config.hold_s)
        self._relays_off()
        if interrupted == "hatch opened":
            self._safe_state()  # detaches where it is
            return self._result(
                category, bin_name, SortOutcome.BLOCKED, "hatch opened mid-sort", actuated_at_s
            )
        self._safe_state()
        if not self._wait_home():
            return self._jam(
                category, bin_name, f"diverter not home {config.home_timeout_s:g} s after the sort"
            )
        if interrupted == "aborted":
            return self._result(
                category, bin_name, SortOutcome.ABORTED, "aborted; diverter home", actuated_at_s
            )
        if count:
            self.counts.add(category, bin_name)
        self.refresh_health()
        return self._result(category, bin_name, SortOutcome.SORTED, reason, actuated_at_s)

    def _dry_run(self, category: str, bin_name: str, reason: str, count: bool) -> SortResult:
        target = self.config.bins[bin_name]
        log.info(
            "dry run: %s -> bin %s (servo %s deg, relay %s, hold %.2f s)%s",
            category,
            bin_name,
            target.angle_deg,
            target.relay_pin,
            self.config.hold_s,
            f"; {reason}" if reason else "",
        )
        actuated_at_s = time.monotonic()
        interrupted = self._hold(self.config.move_s + self.config.hold_s + self.config.return_s)
        if interrupted is not None:
            return self._result(category, bin_name, SortOutcome.ABORTED, "aborted", actuated_at_s)
        if count:
            self.counts.add(category, bin_name)
        return self._result(category, bin_name, SortOutcome.DRY_RUN, reason, actuated_at_s)

    def _jam(self, category: str, bin_name: str, why: str) -> SortResult:
        self._jammed = True
        self.jams += 1
        self._relays_off()
        if self._servo is not None:
            self._servo.detach()  # a stalled servo pushing against a jam burns out
        log.error("jam: %s; sorting stopped", why)
        self.refresh_health()
        return self._result(category, bin_name, SortOutcome.JAMMED, why, None)

    def _result(
        self, category: str, bin_name: str, outcome: SortOutcome, reason: str, actuated_at_s: float | None
    ) -> SortResult:
        return SortResult(category, bin_name, outcome, reason, actuated_at_s, time.monotonic())

    def clear_jam(self) -> bool:
        """A technician cleared the chute: resume if the diverter is home now. Returns whether it is."""
        with self._sorting:
            if self._jammed and self._at_home():
                self._jammed = False
                self._needs_home = True
                log.info("jam cleared")
            self.refresh_health()
            return not self._jammed

    def abort(self) -> None:
        """Cut a running sequence short: flaps close and the diverter goes home now (SIGTERM mid-sort)."""
        self._abort.set()

    def close(self) -> None:
        """Abort any sequence, apply the safe state and release every pin. Idempotent."""
        if self._closed:
            return
        self.abort()
        with self._sorting:
            self._closed = True
            try:
                self._safe_state()
            finally:
                self._close_devices()

    def __enter__(self) -> Sorter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
