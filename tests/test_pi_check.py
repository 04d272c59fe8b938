"""tools/pi-check in its simulated mode: the real check code on MockFactory pins and the replay camera,
run as the installer runs it (a separate process), with the exit status and the report read back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import val_photos

REPO = Path(__file__).resolve().parents[1]

# A bin with a servo, two flaps on relays, a hatch interlock and a home switch. The inputs are wired so
# that MockFactory's idle levels read as "hatch closed" and "diverter home" (pull down, active low).
BIN_CONFIG = """
gpio: {pin_factory: mock}
camera: {width: 320, height: 240, fps: 10}
sorter:
  move_s: 0.02
  hold_s: 0.02
  return_s: 0.02
  bins:
    glass: {angle_deg: 45, relay_pin: 23}
    plastic: {angle_deg: -15}
    trash: {angle_deg: 75, relay_pin: 24}
  residual_bin: trash
  interlock: {pin: 5, pull: down, active_when: low}
  home_switch: {pin: 6, pull: down, active_when: low}
storage: {state_dir: STATE}
"""


def run_pi_check(tmp_path: Path, *args: str, config: str = BIN_CONFIG) -> subprocess.CompletedProcess[str]:
    config_file = tmp_path / "bin.yaml"
    config_file.write_text(config.replace("STATE", str(tmp_path / "state")))
    photos = tmp_path / "photos"
    photos.mkdir(exist_ok=True)
    for photo in val_photos("glass")[:2]:
        (photos / photo.name).write_bytes(photo.read_bytes())
    command = [sys.executable, str(REPO / "tools" / "lib" / "pi_check.py"), "--config", str(config_file)]
    command += ["--simulate", "--photos", str(photos), "--camera-seconds", "1.5", "--inference-runs", "5"]
    return subprocess.run(
        command + list(args), capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )


def report_lines(result: subprocess.CompletedProcess[str], check: str) -> list[str]:
    return [line for line in result.stdout.splitlines() if line[7:].startswith(check)]


def test_simulated_bin_passes_every_check_and_each_actuator_moves(tmp_path: Path) -> None:
    result = run_pi_check(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    (camera,) = report_lines(result, "camera")
    assert camera.startswith("[ ok ]") and "320x240 at" in camera
    fps = float(camera.split(" at ")[1].split(" fps")[0])
    assert 8.0 <= fps <= 11.0, "the replay camera is paced at the configured 10 fps"
    inputs = report_lines(result, "input")
    assert any("hatch interlock (pin 5): on" in line for line in inputs)
    assert any("home switch (pin 6): on" in line for line in inputs)
    actuators = report_lines(result, "actuator")
    assert len(actuators) == 3 and all(line.startswith("[ ok ]") for line in actuators)
    # Read back from the mock pins: the servo pulse for the bin's angle, and the bin's relay.
    glass = next(line for line in actuators if "glass:" in line)
    assert "servo pin 18 pulsed 1.75 ms" in glass and "relay pin 23 switched" in glass
    assert "relay" not in next(line for line in actuators if "plastic:" in line)
    (inference,) = report_lines(result, "inference")
    assert "via ai-edge-litert" in inference and "classify() p50" in inference
    assert report_lines(result, "disk")[0].startswith("[ ok ]")
    assert result.stdout.splitlines()[-1].startswith("pi-check: PASS")


def test_missing_camera_and_a_silent_fill_sensor_fail_the_check(tmp_path: Path) -> None:
    # No echo ever comes back on a mock pin: the installer must hear that the sensor is not answering.
    config = BIN_CONFIG.replace(
        "glass: {angle_deg: 45, relay_pin: 23}",
        "glass: {angle_deg: 45, relay_pin: 23, fill_sensor: "
        "{echo_pin: 20, trigger_pin: 21, empty_distance_m: 1.0, full_distance_m: 0.2}}",
    )
    result = run_pi_check(tmp_path, "--set", "camera.source=/dev/video9", config=config)
    assert result.returncode == 1, result.stdout + result.stderr
    assert report_lines(result, "camera")[0].startswith("[FAIL]")
    (fill,) = [line for line in report_lines(result, "input") if "fill level" in line]
    assert fill.startswith("[FAIL]") and "no echo" in fill
    assert "inference" in result.stdout, "a failed camera does not stop the other checks"
    assert result.stdout.splitlines()[-1].startswith("pi-check: FAIL")


def test_actuators_are_not_moved_unasked_on_real_pins(tmp_path: Path) -> None:
    result = run_pi_check(tmp_path, "--move", "none")
    assert result.returncode == 0, result.stdout + result.stderr
    (actuator,) = report_lines(result, "actuator")
    assert "not moved" in actuator
