"""Fixtures of the MQTT tests: a real Mosquitto per test (plain or TLS), recording subscribers, bins."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from recyclex_edge.config import MqttConfig
from recyclex_edge.health import HealthRegistry
from recyclex_edge.mqtt import MqttBridge
from recyclex_edge.outbox import REOPEN_INTERVAL_S, Outbox
from tests.mqtt.support import (
    Bin,
    Collector,
    FakeDaemon,
    Mosquitto,
    TlsFiles,
    connect_collector,
    make_tls_files,
)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_broker(tmp_path: Path, tls_files: TlsFiles) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path / "tls-broker", tls=tls_files)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def collector() -> Iterator[Callable[..., Collector]]:
    """collector(broker, ["topic/#"], protocol=..., tls=...): a subscriber closed after the test."""
    made: list[Collector] = []

    def make(server: Mosquitto, topics: list[str], **options: Any) -> Collector:
        made.append(connect_collector(server, topics, f"collector-{len(made)}-{server.port}", **options))
        return made[-1]

    yield make
    for item in made:
        item.close()


@pytest.fixture
def make_bin(tmp_path: Path) -> Iterator[Callable[..., Bin]]:
    """make_bin(config, device_id=..., start=True, state_dir=..., reopen_interval_s=...): a started
    bridge, stopped after the test."""
    made: list[Bin] = []

    def make(
        config: MqttConfig,
        device_id: str = "bin-test",
        *,
        start: bool = True,
        state_dir: Path | None = None,
        reopen_interval_s: float = REOPEN_INTERVAL_S,
    ) -> Bin:
        health = HealthRegistry()
        path = (state_dir or tmp_path / f"state-{device_id}") / "outbox.sqlite3"
        outbox = Outbox(
            path, max_rows=10_000, max_bytes=16 << 20, health=health, reopen_interval_s=reopen_interval_s
        )
        daemon = FakeDaemon()
        bridge = MqttBridge(
            config,
            device_id,
            outbox,
            health,
            commands=daemon.handlers(),
            state_provider=daemon.state,
            stats_provider=daemon.stats,
            device_name="Test bin",
        )
        if start:
            bridge.start()
        made.append(Bin(bridge, outbox, health, daemon))
        return made[-1]

    yield make
    for item in made:
        item.bridge.stop()
        item.outbox.close()
