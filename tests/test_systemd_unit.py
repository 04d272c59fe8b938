"""The unit file: verified by systemd itself, and hardened as far as GPIO and camera access allow."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "recyclex-edge.service"
INSTALLED_EXEC = "/opt/recyclex-edge/venv/bin/recyclex-edge"


@pytest.fixture
def unit_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at this venv's entry point, which exists here (/opt does not)."""
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing; tools/test installs the systemd package")
    entry_point = Path(sys.executable).with_name("recyclex-edge")
    assert entry_point.exists(), entry_point
    text = UNIT.read_text()
    assert INSTALLED_EXEC in text
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(INSTALLED_EXEC, str(entry_point)))
    return unit


def test_unit_verifies_cleanly(unit_here: Path) -> None:
    completed = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit_here)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=unit_here.parent,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr.strip() == "", completed.stderr


def test_exposure_is_at_most_3(unit_here: Path) -> None:
    completed = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit_here)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=unit_here.parent,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", completed.stdout)
    assert match, completed.stdout[-2000:] + completed.stderr
    assert float(match.group(1)) <= 3.0


def test_unit_has_what_the_daemon_relies_on() -> None:
    settings = dict(
        line.split("=", 1)
        for line in UNIT.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert settings["Type"] == "notify"
    assert settings["Restart"] == "on-failure"
    assert settings["WorkingDirectory"] == "/var/lib/recyclex-edge", (
        "lgpio needs a writable working directory"
    )
    assert settings["StateDirectory"] == "recyclex-edge"
    assert "WatchdogSec" in settings and "MemoryMax" in settings
    assert "gpio" in settings["SupplementaryGroups"] and "video" in settings["SupplementaryGroups"]


def test_limits_fit_the_http_caps_and_the_unit_always_comes_back() -> None:
    """Issue 18: with 1024 files the bin ran out of them before any cap; with StartLimitBurst it stayed
    down after an attack made it crash five times."""
    from recyclex_edge.api.guard import files_needed
    from recyclex_edge.config import Config

    settings = dict(
        line.split("=", 1)
        for line in UNIT.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert int(settings["LimitNOFILE"]) >= files_needed(Config().http.connections)
    assert settings["StartLimitIntervalSec"] == "0", "no start limit: the bin recovers by itself"
    assert float(settings["RestartSec"]) >= 5, "restarts are paced"
    assert settings["MemoryMax"].endswith("M") and int(settings["MemoryMax"][:-1]) >= 400
