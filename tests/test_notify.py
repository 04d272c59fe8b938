"""sd_notify messages reach a real datagram socket; the watchdog needs every loop to make progress."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from recyclex_edge.notify import Liveness, Notifier, watchdog_interval_s


@pytest.fixture
def notify_socket(tmp_path: Path) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify.sock"))
    listener.settimeout(5)
    return listener


def test_messages_arrive_on_notify_socket(tmp_path: Path, notify_socket: socket.socket) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    assert notifier.enabled
    assert notifier.send(READY=1, STATUS="sorting")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=sorting"
    notifier.close()


def test_abstract_namespace_socket() -> None:
    name = f"recyclex-test-{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind("\0" + name)
    listener.settimeout(5)
    notifier = Notifier(f"@{name}")
    assert notifier.send(WATCHDOG=1)
    assert listener.recv(100) == b"WATCHDOG=1"
    listener.close()


def test_without_systemd_nothing_is_sent() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert notifier.send(READY=1) is False


def test_watchdog_interval_is_half_of_watchdog_sec() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None


def test_liveness_names_the_silent_loop() -> None:
    liveness = Liveness(max_silence_s=0.2)
    liveness.register("camera")
    liveness.register("inference")
    assert liveness.silent() == []
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        liveness.beat("camera")
        time.sleep(0.02)
    assert liveness.silent() == ["inference"]
    liveness.beat("inference")
    assert liveness.silent() == []
