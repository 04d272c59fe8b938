"""Board vitals for the stats message: CPU, memory, SoC temperature, from Linux /proc and /sys.

Each reading is None where the board or kernel does not offer it (no thermal zone on a PC, say).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")  # the SoC sensor on a Raspberry Pi
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


class CpuMeter:
    """This process's CPU use between two readings, in percent of one core."""

    def __init__(self) -> None:
        self._wall = time.monotonic()
        self._cpu = time.process_time()

    def percent(self) -> float:
        wall, cpu = time.monotonic(), time.process_time()
        elapsed = wall - self._wall
        used = (cpu - self._cpu) / elapsed * 100 if elapsed > 0 else 0.0
        self._wall, self._cpu = wall, cpu
        return round(used, 1)


def memory_rss_bytes() -> int | None:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return None


def memory_available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        return None
    return None


def soc_temperature_c() -> float | None:
    try:
        return round(int(_THERMAL_ZONE.read_text()) / 1000, 1)
    except (OSError, ValueError):
        return None


def load_1m() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
