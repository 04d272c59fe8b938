"""Home Assistant discovery of a whole bin, read back from a real Mosquitto's retained messages.

What Home Assistant Core (2025.4) showed with the old payloads: counters only for categories counted
before the announcement, `counters: {}` after reset-counters (a template warning per sensor), QoS 0
because `qos` sat at the root. Here: every category from the start and after a reset, 0 included, and
`qos` inside every component. What a running Home Assistant makes of them: tools/ha-check.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from recyclex_edge.daemon import Daemon
from recyclex_edge.decision import UNCERTAIN
from tests.mqtt.support import Mosquitto, connect_collector
from tests.test_daemon import (  # the same replayed-bin set-up as the pipeline tests
    bin_config,
    broker_settings,
    next_events,
    photo_folder,
    run_daemon,  # noqa: F401  (a fixture)
)
from tests.test_daemon_mqtt import command, wait_for

PREFIX = "recyclex/bin-ha"
DISCOVERY = "homeassistant/device/bin-ha/config"


async def test_a_fresh_bin_announces_every_category_and_keeps_the_set(
    tmp_path: Path,
    broker: Mosquitto,
    run_daemon: Any,  # noqa: F811
) -> None:
    photos = photo_folder(tmp_path, ["glass", "metal"])
    config = bin_config(
        tmp_path,
        photos,
        *broker_settings(broker.port, "bin-ha"),
        # A category with a bin but no model label, and a bin with a fill sensor.
        "sorter.bins.ewaste.angle_deg=60",
        "sorter.bins.glass.fill_sensor.trigger_pin=23",
        "sorter.bins.glass.fill_sensor.echo_pin=24",
        "sorter.bins.glass.fill_sensor.empty_distance_m=1.0",
        "sorter.bins.glass.fill_sensor.full_distance_m=0.2",
        "mqtt.stats_interval_s=1",
    )
    daemon: Daemon = await run_daemon(config)
    assert daemon.classifier is not None
    expected = sorted({*daemon.classifier.labels, *config.sorter.bins, UNCERTAIN})
    assert "ewaste" in expected

    home_assistant = connect_collector(broker, [DISCOVERY, f"{PREFIX}/#"], "ha")
    try:
        first = (await wait_for(home_assistant, DISCOVERY, 1))[0]
        components = first["cmps"]
        counted = sorted(key.removeprefix("bin-ha_count_") for key in components if "_count_" in key)
        assert counted == expected, "every category has its entity before any item is counted"
        assert "qos" not in first, "Home Assistant ignores a root-level qos"
        assert all(component["qos"] == 1 for component in components.values())
        glass = components["bin-ha_count_glass"]
        assert glass["name"] == "Glass items" and "default(0)" in glass["value_template"]
        assert components["bin-ha_fill_glass"]["state_class"] == "measurement"
        assert components["bin-ha_last_confidence"]["state_class"] == "measurement"

        states = await wait_for(home_assistant, f"{PREFIX}/state", 1)
        assert sorted(states[-1]["counters"]) == expected
        assert set(states[-1]["counters"].values()) == {0}

        await next_events(daemon, 1, timeout_s=90)
        answer = await command(home_assistant, PREFIX, "reset-counters", {})
        assert answer["ok"] is True, answer
        async with asyncio.timeout(30):
            while True:
                state = home_assistant.on(f"{PREFIX}/state")[-1].json()
                if set(state["counters"].values()) == {0}:
                    break
                await asyncio.sleep(0.05)
        assert sorted(state["counters"]) == expected, "a reset keeps every category, at 0"

        # Home Assistant comes back: the same entities, nothing to remove.
        home_assistant.clear()
        home_assistant.publish("homeassistant/status", "online")
        again = (await wait_for(home_assistant, DISCOVERY, 1))[0]
        assert set(again["cmps"]) == set(components)

        before = len(home_assistant.on(f"{PREFIX}/stats"))
        stats = (await wait_for(home_assistant, f"{PREFIX}/stats", before + 2))[-1]
        assert stats["fps"] > 1, "the camera's measured frame rate (docs/mqtt.md)"
    finally:
        home_assistant.close()


def test_the_discovery_payload_is_json_with_stable_keys() -> None:
    from recyclex_edge.mqtt.discovery import discovery_payload
    from recyclex_edge.mqtt.topics import Topics

    topics = Topics.for_device("bin-x", "recyclex", "homeassistant")
    state = {"counters": {"glass": 0, UNCERTAIN: 0}, "fill_levels": {"glass": None}}
    payload = json.loads(json.dumps(discovery_payload(topics, "", state, ["mode", "reset-counters"])))
    assert set(payload["cmps"]) >= {"bin-x_count_glass", "bin-x_count_uncertain", "bin-x_fill_glass"}
