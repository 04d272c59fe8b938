"""GET /metrics of a whole bin: its own metrics (items, camera, sorter, outbox, MQTT, health), promtool-clean.

Real parts: replayed TrashNet photos through the shipped model, MockFactory pins, a real Mosquitto, the
daemon's real HTTP port, and Debian's promtool (installed by tools/test) to check the exposition.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from recyclex_edge.daemon import Daemon
from recyclex_edge.decision import UNCERTAIN
from tests.mqtt.support import Mosquitto
from tests.test_daemon import (  # the same replayed-bin set-up as the pipeline tests
    bin_config,
    broker_settings,
    next_events,
    photo_folder,
    run_daemon,  # noqa: F401  (a fixture)
    target_bin,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def promtool() -> str:
    path = shutil.which("promtool")
    assert path is not None, "promtool is missing: tools/test installs Debian's prometheus package"
    return path


def check_with_promtool(text: str) -> None:
    result = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"promtool check metrics:\n{result.stdout}{result.stderr}"
    assert result.stdout.strip() == "" and result.stderr.strip() == "", (
        f"promtool has remarks:\n{result.stdout}{result.stderr}"
    )


async def scrape(daemon: Daemon) -> tuple[str, Samples]:
    config = daemon.config.http
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{config.host}:{config.port}/metrics") as response,
    ):
        assert response.status == 200
        text = await response.text()
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return text, samples


def value(samples: Samples, name: str, /, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def total(samples: Samples, name: str) -> float:
    return sum(v for (sample_name, _), v in samples.items() if sample_name == name)


async def test_a_sorting_bin_exports_what_it_sorted_and_how_its_parts_are(
    tmp_path: Path,
    broker: Mosquitto,
    run_daemon: Any,  # noqa: F811
) -> None:
    photos = photo_folder(tmp_path, ["glass", "paper", "metal"])
    config = bin_config(tmp_path, photos, *broker_settings(broker.port, "bin-metrics"))
    daemon: Daemon = await run_daemon(config)
    events = await next_events(daemon, 2, timeout_s=90)
    assert daemon.outbox is not None
    async with asyncio.timeout(30):  # the broker acknowledges both
        while daemon.outbox.depth > 0:
            await asyncio.sleep(0.05)

    text, samples = await scrape(daemon)
    check_with_promtool(text)

    assert total(samples, "recyclex_items_total") >= 2
    first = events[0]
    assert (
        value(
            samples,
            "recyclex_items_total",
            **{"class": first["class"]},
            decision=first["decision"],
            action="sorted",
        )
        or 0
    ) >= 1
    assert (value(samples, "recyclex_item_settled_to_decided_seconds_count") or 0) >= 2
    assert (value(samples, "recyclex_item_decided_to_actuated_seconds_count") or 0) >= 2
    assert (value(samples, "recyclex_deposits_total") or 0) >= 2
    assert (value(samples, "recyclex_camera_frames_total") or 0) > 10
    assert value(samples, "recyclex_camera_stalls_total") == 0
    assert value(samples, "recyclex_camera_reconnects_total") == 0
    for event in events:
        assert (value(samples, "recyclex_sorter_moves_total", bin=target_bin(event)) or 0) >= 1
    assert value(samples, "recyclex_sorter_jams_total") == 0
    assert value(samples, "recyclex_outbox_depth") == 0
    assert value(samples, "recyclex_outbox_oldest_age_seconds") == 0
    assert value(samples, "recyclex_outbox_lost_total") == 0
    assert value(samples, "recyclex_mqtt_connected") == 1
    assert value(samples, "recyclex_mqtt_reconnects_total") == 0
    assert (value(samples, "recyclex_disk_free_bytes") or 0) > 0
    ratio = value(samples, "recyclex_uncertain_ratio")
    assert ratio is not None and 0 <= ratio <= 1
    items_total = total(samples, "recyclex_items_total")
    uncertain = sum(
        v
        for (name, labels), v in samples.items()
        if name == "recyclex_items_total" and ("decision", UNCERTAIN) in labels
    )
    assert ratio == uncertain / items_total
    # Every component in /health has a status series, with the value the registry holds.
    components = daemon.health.snapshot()
    assert {"classifier", "camera", "detector", "sorter", "mqtt", "outbox", "disk"} <= set(components)
    assert "fill_levels" in components and components["fill_levels"].status.value == "disabled"
    for name, component in components.items():
        expected = {"ok": 0, "disabled": 0, "degraded": 1, "failing": 2}[component.status.value]
        assert value(samples, "recyclex_health_status", component=name) == expected, name
        enabled = value(samples, "recyclex_component_enabled", component=name)
        assert enabled == (0 if component.status.value == "disabled" else 1), name
    assert value(samples, "recyclex_component_enabled", component="fill_levels") == 0


async def test_the_outbox_backlog_and_a_lost_broker_show(
    tmp_path: Path,
    broker: Mosquitto,
    run_daemon: Any,  # noqa: F811
) -> None:
    photos = photo_folder(tmp_path, ["cardboard", "glass"])
    config = bin_config(tmp_path, photos, *broker_settings(broker.port, "bin-backlog"))
    daemon: Daemon = await run_daemon(config)
    async with asyncio.timeout(30):
        while not (daemon.mqtt is not None and daemon.mqtt.connected):
            await asyncio.sleep(0.05)
    broker.stop()
    await next_events(daemon, 2, timeout_s=90)
    await asyncio.sleep(1.0)

    text, samples = await scrape(daemon)
    check_with_promtool(text)
    assert value(samples, "recyclex_mqtt_connected") == 0
    assert (value(samples, "recyclex_outbox_depth") or 0) >= 2
    assert (value(samples, "recyclex_outbox_oldest_age_seconds") or 0) >= 1.0
    assert value(samples, "recyclex_health_status", component="mqtt") == 2


async def test_a_bin_without_mqtt_shows_it_disabled_not_missing(
    tmp_path: Path,
    run_daemon: Any,  # noqa: F811
) -> None:
    photos = photo_folder(tmp_path, ["glass"])
    daemon: Daemon = await run_daemon(bin_config(tmp_path, photos))  # mqtt.enabled=false
    config = daemon.config.http
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{config.host}:{config.port}/health") as response,
    ):
        health = await response.json()
    assert health["components"]["mqtt"]["status"] == "disabled"
    assert health["components"]["outbox"]["status"] == "disabled"
    assert health["components"]["fill_levels"]["status"] == "disabled"
    assert health["status"] != "failing"
    _, samples = await scrape(daemon)
    assert value(samples, "recyclex_health_status", component="mqtt") == 0
    assert value(samples, "recyclex_component_enabled", component="mqtt") == 0
    assert value(samples, "recyclex_mqtt_connected") is None, "no broker series for a bin without MQTT"
    assert value(samples, "recyclex_sorter_jams_total") == 0
