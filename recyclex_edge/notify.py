"""systemd's notify protocol (sd_notify), and a watchdog that only pets while the bin is really alive.

A timer that sends WATCHDOG=1 regardless proves only that the event loop runs. We ping only while every
registered loop (the camera loop and the inference loop) has made progress recently, so a wedged camera
driver or a stuck interpreter gets the service restarted by systemd.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages to $NOTIFY_SOCKET; does nothing when not started by systemd.

    >>> notifier = Notifier.from_environment()
    >>> notifier.send(READY=1, STATUS="sorting")
    """

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._socket: socket.socket | None = None
        if address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        environ = os.environ if environ is None else environ
        return cls(environ.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, **fields: object) -> bool:
        """Send KEY=VALUE lines in one datagram; True when systemd got it."""
        if self._socket is None or not self.address:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        # A leading '@' names a socket in the abstract namespace.
        address = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            self._socket.sendto(message, address)
        except OSError as error:
            log.warning("sd_notify to %s failed: %s", self.address, error)
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """Half of systemd's WatchdogSec= (the recommended ping rate), or None when there is no watchdog."""
    environ = os.environ if environ is None else environ
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None


class Liveness:
    """Heartbeats from named loops; alive only while all of them beat within `max_silence_s`."""

    def __init__(self, max_silence_s: float) -> None:
        self.max_silence_s = max_silence_s
        self._lock = threading.Lock()
        self._last_beat: dict[str, float] = {}

    def register(self, name: str) -> None:
        with self._lock:
            self._last_beat.setdefault(name, time.monotonic())

    def beat(self, name: str) -> None:
        with self._lock:
            self._last_beat[name] = time.monotonic()

    def silent(self) -> list[str]:
        """The loops that have not beaten recently (empty: everything is alive)."""
        now = time.monotonic()
        with self._lock:
            return sorted(name for name, last in self._last_beat.items() if now - last > self.max_silence_s)
