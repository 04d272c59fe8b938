"""The Raspberry Pi install's pins agree with the package's dependencies (tools/arm64-check is not in CI:
this is what catches a dependency bump that the Pi's numpy-1.x camera stack could not live with)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def pi_pins() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "tools" / "pi-constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()  # pip's comment rule: from " #" or a line's start
        if line:
            name, version = line.split("==")
            pins[name.strip()] = Version(version.strip())
    return pins


def test_every_pin_satisfies_the_package_requirements_on_a_pi() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["pi"]]
    pi = {"platform_machine": "aarch64", "python_version": "3.11", "sys_platform": "linux"}
    pins = pi_pins()
    for requirement in requirements:
        if requirement.marker is not None and not requirement.marker.evaluate(pi):
            continue
        if requirement.name in pins:
            assert pins[requirement.name] in requirement.specifier, (
                f"tools/pi-constraints.txt pins {requirement.name}=={pins[requirement.name]}, "
                f"but pyproject.toml asks for {requirement}"
            )
    assert {"numpy", "opencv-python-headless", "ai-edge-litert"} <= set(pins)


def test_numpy_stays_below_2_for_the_apt_camera_stack() -> None:
    assert pi_pins()["numpy"] < Version("2"), "apt's picamera2/simplejpeg are built for numpy 1.x"


def test_the_pi_extra_leaves_picamera2_to_apt() -> None:
    # PyPI's picamera2 pulls python-prctl and PiDNG, which are source-only on arm64.
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["pi"]
    assert not any(Requirement(r).name == "picamera2" for r in extra)
