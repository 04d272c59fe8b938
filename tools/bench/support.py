"""What every benchmark here needs: a free loopback port and a process's memory, read from /proc."""

from __future__ import annotations

import socket
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def rss_mib(pid: int | str = "self", field: str = "VmRSS") -> float:
    """A memory figure of /proc/PID/status in MiB: VmRSS now, or VmHWM, the peak so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")
