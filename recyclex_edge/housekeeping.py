"""Slow checks of the machine the bin runs on: free disk in the state directory and SoC temperature.

A full SD card stops the outbox from persisting events and a hot SoC throttles inference; both are
things a technician must see on the health page before they become a lost event or a slow sort.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from recyclex_edge.health import HealthRegistry, Status
from recyclex_edge.mqtt.system import soc_temperature_c

DISK_FAILING_BYTES = 50 * 1024 * 1024
DISK_DEGRADED_BYTES = 500 * 1024 * 1024
# Raspberry Pi firmware throttles at 80 degrees C (soft limit from 60 on a Pi 4 with arm_freq set high).
TEMPERATURE_DEGRADED_C = 75.0
TEMPERATURE_FAILING_C = 85.0


def check_disk(
    state_dir: Path,
    health: HealthRegistry,
    *,
    failing_below_bytes: int = DISK_FAILING_BYTES,
    degraded_below_bytes: int = DISK_DEGRADED_BYTES,
) -> int | None:
    """Report the `disk` component; returns the free bytes (None when the directory cannot be read)."""
    try:
        free = shutil.disk_usage(state_dir).free
    except OSError as error:
        health.report("disk", Status.FAILING, f"cannot read the state directory: {error.strerror}")
        return None
    free_mib = free / 1024 / 1024
    if free < failing_below_bytes:
        health.report(
            "disk", Status.FAILING, f"{free_mib:.0f} MiB free in the state directory: events cannot be kept"
        )
    elif free < degraded_below_bytes:
        health.report(
            "disk", Status.DEGRADED, f"{free_mib:.0f} MiB free in the state directory: clean up soon"
        )
    else:
        health.report("disk", Status.OK, f"{free_mib:.0f} MiB free in the state directory")
    return free


def check_temperature(health: HealthRegistry) -> float | None:
    """Report the `soc_temperature` component; returns degrees C (None without a thermal sensor)."""
    celsius = soc_temperature_c()
    if celsius is None:
        # A PC or a container: shown as disabled rather than missing, so its absence is explained.
        health.report("soc_temperature", Status.DISABLED, "no thermal sensor on this board")
        return None
    if celsius >= TEMPERATURE_FAILING_C:
        health.report(
            "soc_temperature", Status.FAILING, f"{celsius:.1f} C: throttling; check the fan and vents"
        )
    elif celsius >= TEMPERATURE_DEGRADED_C:
        health.report("soc_temperature", Status.DEGRADED, f"{celsius:.1f} C: close to throttling")
    else:
        health.report("soc_temperature", Status.OK, f"{celsius:.1f} C")
    return celsius
