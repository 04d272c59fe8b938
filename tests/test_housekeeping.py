"""Disk and temperature checks that a technician reads on /health."""

from __future__ import annotations

import shutil
from pathlib import Path

from recyclex_edge.health import HealthRegistry, Status
from recyclex_edge.housekeeping import check_disk


def test_disk_space_thresholds(tmp_path: Path) -> None:
    health = HealthRegistry()
    free = shutil.disk_usage(tmp_path).free
    check_disk(tmp_path, health, failing_below_bytes=1, degraded_below_bytes=2)
    assert health.snapshot()["disk"].status is Status.OK
    check_disk(tmp_path, health, failing_below_bytes=1, degraded_below_bytes=free * 2)
    assert health.snapshot()["disk"].status is Status.DEGRADED
    check_disk(tmp_path, health, failing_below_bytes=free * 2, degraded_below_bytes=free * 4)
    disk = health.snapshot()["disk"]
    assert disk.status is Status.FAILING and "events cannot be kept" in disk.detail


def test_missing_state_directory_is_failing(tmp_path: Path) -> None:
    health = HealthRegistry()
    check_disk(tmp_path / "absent", health)
    assert health.snapshot()["disk"].status is Status.FAILING
