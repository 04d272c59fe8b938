"""The whole bin talking to a real Mosquitto: sorted items become MQTT events, dashboards command it."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema

from recyclex_edge.daemon import Daemon
from recyclex_edge.model_card import SHIPPED_MODEL, card_path_for, sha256_of
from tests.mqtt.support import Collector, Mosquitto, connect_collector
from tests.test_daemon import (  # the same replayed-bin set-up as the pipeline tests
    ANGLES,
    bin_config,
    broker_settings,
    duty,
    next_events,
    photo_folder,
    run_daemon,  # noqa: F401  (a fixture)
    servo_duties,
)

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "schemas" / "event.schema.json").read_text())


async def wait_for(collector: Collector, topic: str, count: int, timeout_s: float = 60) -> list[Any]:
    async with asyncio.timeout(timeout_s):
        while len(collector.on(topic)) < count:
            await asyncio.sleep(0.05)
    return [message.json() for message in collector.on(topic)]


async def command(collector: Collector, prefix: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result_topic = f"{prefix}/cmd/{name}/result"
    before = len(collector.on(result_topic))
    collector.publish(f"{prefix}/cmd/{name}", json.dumps(arguments))
    results = await wait_for(collector, result_topic, before + 1, timeout_s=30)
    answer: dict[str, Any] = results[-1]
    return answer


async def test_sorted_items_reach_the_dashboard_and_commands_reach_the_bin(
    tmp_path: Path,
    broker: Mosquitto,
    run_daemon: Any,  # noqa: F811
) -> None:
    photos = photo_folder(tmp_path, ["glass", "paper", "metal"])
    config = bin_config(
        tmp_path,
        photos,
        *broker_settings(broker.port, "bin-mqtt"),
    )
    prefix = "recyclex/bin-mqtt"
    collector = connect_collector(broker, [f"{prefix}/#"], "dashboard", protocol="5")
    try:
        daemon: Daemon = await run_daemon(config)
        local = await next_events(daemon, 2, timeout_s=90)
        published = await wait_for(collector, f"{prefix}/events", 2)
        for event in published:
            jsonschema.validate(event, SCHEMA)
        assert [e["id"] for e in published[:2]] == [e["id"] for e in local]
        assert published[0]["action"].startswith("sorted:")

        assert (await command(collector, prefix, "mode", {"mode": "maintenance"}))["ok"] is True
        assert daemon.pipeline is not None and daemon.pipeline.mode.value == "maintenance"
        states = await wait_for(collector, f"{prefix}/state", 1)
        async with asyncio.timeout(10):
            while states[-1]["mode"] != "maintenance":
                await asyncio.sleep(0.05)
                states = [m.json() for m in collector.on(f"{prefix}/state")]

        counted_before = dict(daemon.sorter.counts.categories) if daemon.sorter else {}
        answer = await command(collector, prefix, "test-actuator", {"category": "plastic"})
        assert answer["ok"] is True, answer
        assert duty(ANGLES["plastic"]) in servo_duties(daemon)
        assert servo_duties(daemon)[-1] == 0.0
        assert daemon.sorter is not None and dict(daemon.sorter.counts.categories) == counted_before

        answer = await command(collector, prefix, "snapshot", {})
        assert answer["ok"] is True and Path(answer["result"]["path"]).is_file(), answer

        answer = await command(collector, prefix, "test-actuator", {"category": "ewaste"})
        assert answer["ok"] is False and "no bin 'ewaste'" in answer["error"]

        assert (await command(collector, prefix, "reset-counters", {}))["ok"] is True
        assert dict(daemon.sorter.counts.categories) == {}
    finally:
        collector.close()


async def test_broker_outage_degrades_the_bin_but_loses_no_event(
    tmp_path: Path,
    broker: Mosquitto,
    run_daemon: Any,  # noqa: F811
) -> None:
    photos = photo_folder(tmp_path, ["cardboard", "glass", "metal", "paper"])
    config = bin_config(tmp_path, photos, *broker_settings(broker.port, "bin-outage"))
    daemon: Daemon = await run_daemon(config)
    async with asyncio.timeout(30):
        while (
            daemon.health.snapshot().get("mqtt") is None
            or daemon.health.snapshot()["mqtt"].status.value != "ok"
        ):
            await asyncio.sleep(0.05)
    # A dashboard with a persistent session (MQTT 3.1.1, QoS 1), subscribed before the outage: the broker
    # keeps its subscription across the restart and queues for it whatever the bin publishes before the
    # dashboard is back, so however the two reconnects race, nothing passes unseen.
    collector = connect_collector(broker, ["recyclex/bin-outage/events"], "outage-dashboard")
    try:
        broker.stop()
        local = await next_events(daemon, 2, timeout_s=90)  # the bin keeps sorting without its broker
        assert daemon.health.snapshot()["mqtt"].status.value == "failing"
        assert daemon.health.overall().value == "degraded"
        assert daemon.outbox is not None and daemon.outbox.depth >= 2, "held in the outbox meanwhile"
        broker.start()
        async with asyncio.timeout(60):
            while not {e["id"] for e in local} <= {
                m.json()["id"] for m in collector.on("recyclex/bin-outage/events")
            }:
                await asyncio.sleep(0.05)
    finally:
        collector.close()


async def test_reload_model_checks_the_new_file_before_switching(
    tmp_path: Path,
    broker: Mosquitto,
    run_daemon: Any,  # noqa: F811
) -> None:
    model = tmp_path / "model" / SHIPPED_MODEL.name
    model.parent.mkdir()
    shutil.copy(SHIPPED_MODEL, model)
    shutil.copy(card_path_for(SHIPPED_MODEL), card_path_for(model))
    photos = photo_folder(tmp_path, ["paper"])
    config = bin_config(
        tmp_path,
        photos,
        f"model.path={model}",
        *broker_settings(broker.port, "bin-reload"),
    )
    prefix = "recyclex/bin-reload"
    collector = connect_collector(broker, [f"{prefix}/#"], "dashboard-reload", protocol="5")
    try:
        daemon: Daemon = await run_daemon(config)
        running = daemon.classifier
        model.write_bytes(model.read_bytes()[:1000])  # a botched copy: the card's sha256 no longer matches
        answer = await command(collector, prefix, "reload-model", {})
        assert answer["ok"] is False and "does not match its card" in answer["error"]
        assert daemon.classifier is running, "a bad file must leave the running model in place"
        await next_events(daemon, 1, timeout_s=60)  # and the bin still sorts

        shutil.copy(SHIPPED_MODEL, model)
        answer = await command(collector, prefix, "reload-model", {})
        assert answer["ok"] is True, answer
        assert daemon.classifier is not running
        assert daemon.health.snapshot()["classifier"].detail.endswith(f"(sha256 {sha256_of(model)[:12]})")
    finally:
        collector.close()
