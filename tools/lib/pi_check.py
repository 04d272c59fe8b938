"""Check a bin's hardware once, for the installer: camera, inputs, actuators, inference, disk, temperature.

Run through `tools/pi-check` (which picks the installed venv). Every check prints one line; the exit
status is 1 when any check failed (warnings do not fail). `--simulate` runs the same code on this machine
with MockFactory pins and the replay camera, and reads the mock pins back to prove each actuator moved.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PHOTOS = REPO.parent / "shared" / "datasets" / "trashnet" / "val"

OK, WARN, FAIL, INFO = "ok", "warn", "FAIL", "info"


@dataclass
class Report:
    """The lines printed so far and the worst outcome."""

    lines: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, outcome: str, check: str, text: str) -> None:
        self.lines.append((outcome, check, text))
        print(f"[{outcome:^4}] {check:<12} {text}", flush=True)

    def count(self, outcome: str) -> int:
        return sum(1 for line in self.lines if line[0] == outcome)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tools/pi-check", description=__doc__)
    installed = Path("/etc/recyclex-edge/recyclex.yaml")
    parser.add_argument(
        "--config",
        type=Path,
        default=installed if installed.exists() else REPO / "config" / "recyclex.yaml",
        help="the bin's config (default: /etc/recyclex-edge/recyclex.yaml when installed)",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--simulate",
        action="store_true",
        help="MockFactory pins and the replay camera (PHOTOS), on any machine; actuators move unasked",
    )
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="replay folder for --simulate")
    parser.add_argument(
        "--move",
        choices=["ask", "all", "none"],
        default=None,
        help="actuators: ask before each (default on a terminal), move all, or none (default otherwise)",
    )
    parser.add_argument("--camera-seconds", type=float, default=5.0, help="how long to count frames")
    parser.add_argument("--inference-runs", type=int, default=50, help="classifications to time")
    return parser.parse_args(argv)


def check_platform(report: Report) -> None:
    import numpy as np

    model_file = Path("/proc/device-tree/model")
    board = model_file.read_text().strip("\x00\n") if model_file.exists() else platform.machine()
    report.add(
        INFO,
        "platform",
        f"{board}; Linux {platform.release()}; Python {platform.python_version()}; "
        f"numpy {np.__version__} ({Path(np.__file__).parent.parent})",
    )


def check_camera(report: Report, config: Any, seconds: float) -> Any:
    """Frames for `seconds`: resolution and rate against the config. Returns the last frame's image."""
    from recyclex_edge.camera import CameraError, build_source

    camera = config.camera
    source = build_source(camera, paced=True)
    try:
        source.open()
    except CameraError as error:
        report.add(FAIL, "camera", f"{camera.source}: {error}")
        return None
    frames, last, started = 0, None, time.monotonic()
    first_at: float | None = None
    try:
        while (now := time.monotonic()) - started < seconds:
            try:
                frame = source.read(timeout_s=1.0)
            except Exception as error:
                report.add(FAIL, "camera", f"{camera.source}: reading failed: {error}")
                return None
            if frame is not None:
                frames += 1
                last = frame
                first_at = now if first_at is None else first_at
    finally:
        source.shutdown()
    if last is None or first_at is None:
        report.add(FAIL, "camera", f"{camera.source}: no frame in {seconds:g} s")
        return None
    height, width = last.image.shape[:2]
    span_s = time.monotonic() - first_at
    fps = (frames - 1) / span_s if frames > 1 and span_s > 0 else 0.0
    text = f"{camera.source}: {width}x{height} at {fps:.1f} fps ({frames} frames in {seconds:g} s; "
    text += f"configured {camera.width}x{camera.height} at {camera.fps:g} fps)"
    if (width, height) != (camera.width, camera.height):
        report.add(FAIL, "camera", text + ": not the configured resolution")
    elif fps < 0.8 * camera.fps:
        report.add(WARN, "camera", text + ": slower than configured")
    else:
        report.add(OK, "camera", text)
    return last.image


def _inputs(config: Any) -> Iterator[tuple[str, Callable[[Any], Any]]]:
    """(name, opener) for every input the config wires; an opener takes the pin factory."""
    from recyclex_edge.detector import build_presence
    from recyclex_edge.gpio import InputSignal
    from recyclex_edge.sorter import FillLevel

    detector = config.detector
    if detector.kind == "gpio" and detector.gpio is not None:
        yield f"deposit sensor ({detector.gpio.kind})", lambda f: build_presence(detector.gpio, f)
    sorter = config.sorter
    if sorter.interlock is not None:
        yield (
            f"hatch interlock (pin {sorter.interlock.pin})",
            lambda f: InputSignal(sorter.interlock, pin_factory=f),
        )
    if sorter.home_switch is not None:
        yield (
            f"home switch (pin {sorter.home_switch.pin})",
            lambda f: InputSignal(sorter.home_switch, pin_factory=f),
        )
    for name, bin_config in sorter.bins.items():
        if bin_config.fill_sensor is not None:
            fill = bin_config.fill_sensor
            yield f"fill level {name}", lambda f, fill=fill: FillLevel.from_config(fill, f)


def _read(device: Any) -> str:
    if hasattr(device, "percent"):
        deadline = time.monotonic() + 2.0
        while (percent := device.percent()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if percent is None:
            raise RuntimeError("no echo within 2 s: check TRIG/ECHO wiring and the divider")
        return f"{percent:.0f} % full"
    return "on" if device.is_on else "off"


def check_inputs(report: Report, config: Any, pin_factory: Any) -> None:
    found = False
    for name, opener in _inputs(config):
        found = True
        try:
            device = opener(pin_factory)
        except Exception as error:
            report.add(FAIL, "input", f"{name}: cannot open: {error}")
            continue
        try:
            report.add(OK, "input", f"{name}: {_read(device)}")
        except Exception as error:
            report.add(FAIL, "input", f"{name}: {error}")
        finally:
            device.close()
    if not found:
        report.add(INFO, "input", "no GPIO inputs configured (vision deposit detection, no sensors)")


def _ask(question: str) -> str:
    try:
        return input(f"        {question} ").strip().lower()
    except EOFError:
        return "q"


def _pin_history_lengths(pin_factory: Any, config: Any) -> dict[Any, int]:
    """How many states each actuator's mock pin has recorded so far, to read one move's states back."""
    servo = config.sorter.servo
    pins = [servo.pin] if servo is not None else []
    pins += [b.relay_pin for b in config.sorter.bins.values() if b.relay_pin is not None]
    return {pin: len(pin_factory.pin(pin).states) for pin in pins}


def _mock_moved(pin_factory: Any, config: Any, bin_name: str, pins_before: dict[Any, int]) -> str | None:
    """On MockFactory pins: what the pins recorded for this move, or why it is not what was asked."""
    target = config.sorter.bins[bin_name]
    servo = config.sorter.servo
    seen = []
    if servo is not None and target.angle_deg is not None:
        states = pin_factory.pin(servo.pin).states[pins_before.get(servo.pin, 0) :]
        pulse_ms = servo.min_pulse_width_ms + (target.angle_deg - servo.min_angle_deg) / (
            servo.max_angle_deg - servo.min_angle_deg
        ) * (servo.max_pulse_width_ms - servo.min_pulse_width_ms)
        wanted = round(pulse_ms / servo.frame_width_ms, 4)
        if wanted not in [round(float(s.state), 4) for s in states]:
            return None
        seen.append(f"servo pin {servo.pin} pulsed {pulse_ms:.2f} ms")
    if target.relay_pin is not None:
        states = pin_factory.pin(target.relay_pin).states[pins_before.get(target.relay_pin, 0) :]
        if not any(bool(s.state) == config.sorter.relay_active_high for s in states):
            return None
        seen.append(f"relay pin {target.relay_pin} switched")
    return ", ".join(seen) or "nothing wired for this bin"


def check_actuators(report: Report, config: Any, pin_factory: Any, move: str, simulated: bool) -> None:
    from recyclex_edge.health import HealthRegistry
    from recyclex_edge.sorter import Sorter, SortOutcome

    if move == "none":
        report.add(INFO, "actuator", "not moved (--move ask or --move all moves each once)")
        return
    with tempfile.TemporaryDirectory() as state_dir:
        try:
            sorter = Sorter(
                config.sorter, state_dir=Path(state_dir), health=HealthRegistry(), pin_factory=pin_factory
            )
        except Exception as error:
            report.add(FAIL, "actuator", str(error))
            return
        with sorter:
            for bin_name in config.sorter.bins:
                if move == "ask":
                    answer = _ask(
                        f"move the diverter/flap for '{bin_name}' now? [Enter: yes, s: skip, q: stop]"
                    )
                    if answer == "q":
                        report.add(INFO, "actuator", "stopped by the installer")
                        return
                    if answer == "s":
                        report.add(INFO, "actuator", f"{bin_name}: skipped")
                        continue
                before = _pin_history_lengths(pin_factory, config) if simulated else {}
                result = sorter.sort(bin_name, count=False)
                if result.outcome is not SortOutcome.SORTED:
                    report.add(FAIL, "actuator", f"{bin_name}: {result.outcome.value}: {result.reason}")
                    continue
                if simulated:
                    seen = _mock_moved(pin_factory, config, bin_name, before)
                    outcome, text = (OK, seen) if seen else (FAIL, "the pins did not show the move")
                    report.add(outcome, "actuator", f"{bin_name}: moved and back home; {text}")
                elif move == "ask":
                    confirmed = _ask(f"did the '{bin_name}' diverter/flap move and come back? [y/n]") == "y"
                    report.add(
                        OK if confirmed else FAIL,
                        "actuator",
                        f"{bin_name}: installer says " + ("it moved" if confirmed else "it did NOT move"),
                    )
                else:
                    report.add(OK, "actuator", f"{bin_name}: sequence ran (not confirmed by eye)")


def check_inference(report: Report, config: Any, image: Any, runs: int) -> None:
    import cv2

    from recyclex_edge.classifier import Classifier

    try:
        classifier = Classifier(config.model.path, num_threads=config.model.num_threads)
    except Exception as error:
        report.add(FAIL, "inference", str(error))
        return
    if image is None:
        photos = sorted(DEFAULT_PHOTOS.rglob("*.jpg"))[:1]
        image = cv2.imread(str(photos[0])) if photos else None
    if image is None:
        report.add(FAIL, "inference", "no camera frame and no photo to classify")
        return
    for _ in range(3):
        classifier.classify(image)
    invoke_ms, total_ms = [], []
    for _ in range(runs):
        started = time.perf_counter()
        result = classifier.classify(image)
        total_ms.append((time.perf_counter() - started) * 1000)
        invoke_ms.append(result.inference_ms)
    card = classifier.card
    report.add(
        OK,
        "inference",
        f"{card.name} {card.input.width}x{card.input.height} via {classifier.backend}, "
        f"{config.model.num_threads} thread(s): model p50 {statistics.median(invoke_ms):.1f} ms, "
        f"classify() p50 {statistics.median(total_ms):.1f} ms, p90 "
        f"{statistics.quantiles(total_ms, n=10)[-1]:.1f} ms ({runs} runs)",
    )


def check_disk(report: Report, state_dir: Path) -> None:
    from recyclex_edge.housekeeping import DISK_DEGRADED_BYTES, DISK_FAILING_BYTES

    where = state_dir
    while not where.exists() and where != where.parent:
        where = where.parent
    usage = shutil.disk_usage(where)
    text = f"{usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f} GiB at {where}"
    outcome = FAIL if usage.free < DISK_FAILING_BYTES else WARN if usage.free < DISK_DEGRADED_BYTES else OK
    report.add(outcome, "disk", text)


def check_temperature(report: Report) -> None:
    from recyclex_edge.housekeeping import TEMPERATURE_DEGRADED_C, TEMPERATURE_FAILING_C
    from recyclex_edge.mqtt.system import soc_temperature_c

    celsius = soc_temperature_c()
    throttled = ""
    if shutil.which("vcgencmd"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            answer = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=5)
            throttled = f"; {answer.stdout.strip()} (0x0: never throttled)"
    if celsius is None:
        report.add(INFO, "temperature", "no SoC thermal sensor here" + throttled)
        return
    outcome = FAIL if celsius >= TEMPERATURE_FAILING_C else WARN if celsius >= TEMPERATURE_DEGRADED_C else OK
    report.add(outcome, "temperature", f"SoC {celsius:.1f} C{throttled}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from recyclex_edge.config import load_config
    from recyclex_edge.errors import ConfigError
    from recyclex_edge.gpio import make_pin_factory

    # --set comes last, so that it wins over what --simulate sets.
    overrides = (
        ["gpio.pin_factory=mock", f"camera.source=replay:{args.photos.resolve()}"] if args.simulate else []
    )
    overrides += args.overrides
    try:
        config = load_config(args.config, overrides)
    except ConfigError as error:
        print(f"pi-check: {args.config} is invalid:", *error.problems, sep="\n  ", file=sys.stderr)
        return 2
    move = args.move or ("all" if args.simulate else "ask" if sys.stdin.isatty() else "none")
    report = Report()
    print(f"pi-check of {args.config}{' (simulated: mock pins, replay camera)' if args.simulate else ''}")
    check_platform(report)
    image = check_camera(report, config, args.camera_seconds)
    try:
        pin_factory = make_pin_factory(config.gpio.pin_factory)
    except Exception as error:
        report.add(FAIL, "gpio", str(error))
    else:
        check_inputs(report, config, pin_factory)
        check_actuators(report, config, pin_factory, move, simulated=args.simulate)
        if pin_factory is not None:
            pin_factory.close()
    check_inference(report, config, image, args.inference_runs)
    check_disk(report, config.storage.state_dir)
    check_temperature(report)
    failed, warned = report.count(FAIL), report.count(WARN)
    verdict = "FAIL" if failed else "PASS"
    print(f"pi-check: {verdict}: {report.count(OK)} ok, {warned} warning(s), {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
