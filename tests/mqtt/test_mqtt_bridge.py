"""The bridge against a real Mosquitto: events, availability, state, stats, discovery, broker restarts."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from recyclex_edge.config import load_config
from recyclex_edge.health import Status
from recyclex_edge.mqtt.events import prepare_event
from recyclex_edge.outbox import Outbox
from tests.mqtt.support import (
    Bin,
    Collector,
    Mosquitto,
    free_port,
    make_event,
    mqtt_config,
    submit,
    wait_until,
)

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "event.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
PREFIX = "recyclex/bin-test"


def first_seen_ids(messages: list[Any]) -> list[str]:
    """Event ids in order of first arrival, duplicates (allowed: at-least-once) removed."""
    seen: dict[str, None] = {}
    for message in messages:
        seen.setdefault(message.json()["id"], None)
    return list(seen)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_events_arrive_in_order_and_match_the_schema(
    broker: Mosquitto, collector: Callable[..., Collector], make_bin: Callable[..., Bin], protocol: str
) -> None:
    dashboard = collector(broker, [f"{PREFIX}/#"])
    bin_ = make_bin(mqtt_config(broker.port, protocol=protocol))
    ids = [submit(bin_.bridge, make_event(i, "glass" if i % 2 else "paper")) for i in range(20)]

    events = dashboard.wait_for(f"{PREFIX}/events", lambda got: len(got) >= 20, "20 events")
    assert [message.json()["id"] for message in events] == ids
    for message in events:
        VALIDATOR.validate(message.json())
        assert message.json()["device"] == "bin-test"
        assert message.json()["schema"] == 1
    assert ids == sorted(ids), "ids sort in creation order"
    wait_until(lambda: bin_.outbox.depth == 0, "the outbox to empty once the broker acknowledged")
    assert dashboard.on(f"{PREFIX}/availability")[-1].payload == b"online"


def test_the_schema_is_not_vacuous() -> None:
    """It accepts what the pipeline produces and rejects what a dashboard could not use."""
    good = make_event(0)
    VALIDATOR.validate(good)
    for key, value in [
        ("confidence", 1.5),
        ("ts", "yesterday"),
        ("id", "not-a-ulid"),
        ("schema", 2),
        ("timing", {"frames": 3, "inference": 4.0}),
        ("action", "Sorted glass"),
    ]:
        with pytest.raises(jsonschema.ValidationError):
            VALIDATOR.validate({**good, key: value})
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate({k: v for k, v in good.items() if k != "action"})


def test_state_is_retained_and_follows_events_and_the_daemon(
    broker: Mosquitto, collector: Callable[..., Collector], make_bin: Callable[..., Bin]
) -> None:
    bin_ = make_bin(mqtt_config(broker.port))
    event_id = submit(bin_.bridge, make_event(0))
    bin_.daemon.counters["glass"] = 1
    bin_.bridge.state_changed()
    wait_until(lambda: bin_.outbox.depth == 0, "the event to be acknowledged")

    late = collector(broker, [f"{PREFIX}/state"])  # subscribes after the fact: retained state
    states = late.wait_for(
        f"{PREFIX}/state",
        lambda got: bool(got) and (got[-1].json()["last_event"] or {}).get("id") == event_id,
        "a state naming the last event",
    )
    state = states[-1].json()
    assert states[0].retain
    assert state["mode"] == "sort"
    assert state["counters"]["glass"] == 1
    assert state["fill_levels"] == {"glass": 40.0, "paper": 75.5}
    assert state["last_event"]["class"] == "glass"
    assert state["outbox"] == {"lost": 0, "durable": True}
    assert state["health"] in {"ok", "degraded"}


def test_stats_are_published_periodically(
    broker: Mosquitto, collector: Callable[..., Collector], make_bin: Callable[..., Bin]
) -> None:
    dashboard = collector(broker, [f"{PREFIX}/stats"])
    make_bin(mqtt_config(broker.port, stats_interval_s=1.0))
    stats = dashboard.wait_for(f"{PREFIX}/stats", lambda got: len(got) >= 2, "two stats messages")
    last = stats[-1].json()
    assert not stats[-1].retain
    assert last["fps"] == 9.7 and last["inference_ms"] == 38.4
    for key in ("uptime_s", "cpu_percent", "memory_rss_bytes", "soc_temp_c", "outbox", "mqtt"):
        assert key in last
    assert last["outbox"]["depth"] == 0 and last["outbox"]["lost"] == 0
    assert last["mqtt"]["reconnects"] == 0


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_broker_restart_loses_nothing_and_reconnects(
    broker: Mosquitto, collector: Callable[..., Collector], make_bin: Callable[..., Bin], protocol: str
) -> None:
    dashboard = collector(broker, [f"{PREFIX}/events", f"{PREFIX}/availability", f"{PREFIX}/state"])
    bin_ = make_bin(mqtt_config(broker.port, protocol=protocol))
    wait_until(lambda: bin_.bridge.connected, "the first connection")
    before = [submit(bin_.bridge, make_event(i)) for i in range(5)]
    dashboard.wait_for(f"{PREFIX}/events", lambda got: len(got) >= 5, "events before the outage")

    broker.stop()
    wait_until(lambda: not bin_.bridge.connected, "the bridge to notice the outage")
    assert bin_.health.snapshot()["mqtt"].status == Status.FAILING
    assert bin_.health.overall() == Status.DEGRADED, "MQTT is not critical: the bin keeps sorting"
    during = [submit(bin_.bridge, make_event(i)) for i in range(50)]
    assert bin_.outbox.depth == 50

    restarted_at = datetime.now(UTC).isoformat(timespec="milliseconds")
    broker.start()
    events = dashboard.wait_for(
        f"{PREFIX}/events",
        lambda got: set(during) <= {m.json()["id"] for m in got},
        "all events after the restart",
    )
    assert first_seen_ids(events) == before + during
    wait_until(lambda: bin_.outbox.depth == 0, "the outbox to empty")
    wait_until(lambda: bin_.health.snapshot()["mqtt"].status == Status.OK, "mqtt health back to ok")
    assert dashboard.on(f"{PREFIX}/availability")[-1].payload == b"online"
    dashboard.wait_for(
        f"{PREFIX}/state", lambda got: got[-1].json()["ts"] > restarted_at, "the state re-published"
    )
    stats = collector(broker, [f"{PREFIX}/stats"])
    last = stats.wait_for(f"{PREFIX}/stats", bool, "stats after the restart")[-1].json()
    assert last["mqtt"]["reconnects"] == 1


def test_clean_stop_publishes_offline(
    broker: Mosquitto, collector: Callable[..., Collector], make_bin: Callable[..., Bin]
) -> None:
    dashboard = collector(broker, [f"{PREFIX}/availability"])
    bin_ = make_bin(mqtt_config(broker.port))
    dashboard.wait_for(
        f"{PREFIX}/availability", lambda got: any(m.payload == b"online" for m in got), "online"
    )
    bin_.bridge.stop()
    dashboard.wait_for(f"{PREFIX}/availability", lambda got: got[-1].payload == b"offline", "offline")


def test_home_assistant_discovery_is_retained_and_reannounced(
    broker: Mosquitto, collector: Callable[..., Collector], make_bin: Callable[..., Bin]
) -> None:
    topic = "homeassistant/device/bin-test/config"
    early = collector(broker, [topic])
    make_bin(mqtt_config(broker.port))
    early.wait_for(topic, bool, "the discovery message")
    home_assistant = collector(broker, [topic])  # comes later: gets the retained copy
    announced = home_assistant.wait_for(topic, bool, "the retained discovery message")
    assert announced[0].retain
    config = announced[0].json()
    assert config["dev"]["ids"] == ["bin-test"]
    assert config["state_topic"] == f"{PREFIX}/state"
    assert config["availability_topic"] == f"{PREFIX}/availability"
    components = config["cmps"]
    assert {c["p"] for c in components.values()} == {"sensor", "select", "button"}
    assert "bin-test_count_glass" in components and "bin-test_fill_paper" in components
    buttons = {c["command_topic"] for c in components.values() if c["p"] == "button"}
    assert buttons == {f"{PREFIX}/cmd/reset-counters", f"{PREFIX}/cmd/reload-model"}
    assert all(c["unique_id"] == key for key, c in components.items())

    home_assistant.clear()
    home_assistant.publish("homeassistant/status", "online")
    again = home_assistant.wait_for(topic, bool, "discovery again after Home Assistant's birth message")
    assert again[0].json() == config


def test_per_entity_discovery_for_home_assistant_before_2024_11(
    broker: Mosquitto, collector: Callable[..., Collector], make_bin: Callable[..., Bin]
) -> None:
    """One retained message per entity, each complete on its own: Home Assistant 2024.3.3 made the same
    device and entities of them as 2025.4.4 of the device message (tools/ha-check --per-entity)."""
    home_assistant = collector(broker, ["homeassistant/#"])
    make_bin(mqtt_config(broker.port, discovery={"per_entity": True}))
    buttons = ["homeassistant/button/bin-test/button_reset-counters/config"]
    buttons.append("homeassistant/button/bin-test/button_reload-model/config")
    for topic in buttons:  # the last messages of the announcement
        home_assistant.wait_for(topic, bool, f"the per-entity message {topic}")
    with home_assistant.lock:
        messages = [m for m in home_assistant.messages if m.topic.startswith("homeassistant/")]
    assert not any(m.topic.startswith("homeassistant/device/") for m in messages), (
        "Home Assistant before 2024.11 warns about any message on a device topic, even an empty one"
    )
    configs = {m.topic: m.json() for m in messages}
    assert len(configs) == len(messages), "each entity once"
    for topic, config in configs.items():
        platform, device, key = topic.split("/")[1:4]
        assert device == "bin-test" and config["unique_id"] == f"bin-test_{key}", topic
        assert "p" not in config, "per-entity messages name their platform in the topic"
        assert config["qos"] == 1 and config["dev"]["ids"] == ["bin-test"]
        assert config["availability_topic"] == f"{PREFIX}/availability"
        assert ("state_topic" in config) == (platform != "button"), topic
    assert configs["homeassistant/sensor/bin-test/count_glass/config"]["state_class"] == "total_increasing"
    assert configs["homeassistant/select/bin-test/mode/config"]["command_topic"] == f"{PREFIX}/cmd/mode"
    assert "homeassistant/sensor/bin-test/fill_paper/config" in configs


def test_switching_the_discovery_layout_clears_what_the_other_one_left(
    broker: Mosquitto, collector: Callable[..., Collector], make_bin: Callable[..., Bin], tmp_path: Path
) -> None:
    """Else Home Assistant would see two copies of every entity (the same unique ids)."""
    device_topic = "homeassistant/device/bin-test/config"
    entity_topic = "homeassistant/sensor/bin-test/count_glass/config"
    watcher = collector(broker, [device_topic, "homeassistant/+/bin-test/+/config"])

    def retained(topic: str) -> bytes | None:
        late = collector(broker, [topic])
        time.sleep(0.5)  # a retained message comes right after the subscription
        got = late.on(topic)
        late.close()
        return got[-1].payload if got else None

    device_layout = make_bin(mqtt_config(broker.port), state_dir=tmp_path / "one")
    watcher.wait_for(device_topic, bool, "the device message")
    time.sleep(0.5)
    assert watcher.on(entity_topic) == [], "nothing to clear, nothing published on per-entity topics"
    device_layout.bridge.stop()

    per_entity = make_bin(
        mqtt_config(broker.port, discovery={"per_entity": True}), state_dir=tmp_path / "two"
    )
    watcher.wait_for(device_topic, lambda got: got[-1].payload == b"", "the device message cleared")
    watcher.wait_for(entity_topic, bool, "the per-entity message")
    assert retained(device_topic) is None
    per_entity.bridge.stop()

    make_bin(mqtt_config(broker.port), state_dir=tmp_path / "three")
    watcher.wait_for(entity_topic, lambda got: got[-1].payload == b"", "the per-entity message cleared")
    assert retained(entity_topic) is None
    assert json.loads(retained(device_topic) or b"{}")["cmps"]["bin-test_count_glass"]["p"] == "sensor"


def test_events_the_broker_refuses_stay_queued_until_it_accepts_them(
    broker: Mosquitto, collector: Callable[..., Collector], make_bin: Callable[..., Bin]
) -> None:
    """MQTT 5: a PUBACK with 'not authorised' is not an acknowledgement; the event is sent again later."""
    broker.acl = f"topic read #\ntopic write {PREFIX}/state\ntopic write {PREFIX}/availability\n"
    broker.reload()
    dashboard = collector(broker, [f"{PREFIX}/events", f"{PREFIX}/state"])
    bin_ = make_bin(mqtt_config(broker.port, protocol="5"))
    dashboard.wait_for(f"{PREFIX}/state", bool, "the state (writable)")
    ids = [submit(bin_.bridge, make_event(i)) for i in range(3)]
    wait_until(lambda: "refused" in bin_.health.snapshot()["mqtt"].detail, "the refusal in mqtt health")
    assert bin_.outbox.depth == 3
    assert dashboard.on(f"{PREFIX}/events") == []

    broker.acl = None
    broker.reload()
    events = dashboard.wait_for(f"{PREFIX}/events", lambda got: len(got) >= 3, "the events once allowed")
    assert first_seen_ids(events) == ids
    wait_until(lambda: bin_.outbox.depth == 0, "the outbox to empty")
    wait_until(lambda: bin_.health.snapshot()["mqtt"].status == Status.OK, "mqtt health back to ok")


def test_user_name_and_password_from_the_environment(
    tmp_path: Path, broker: Mosquitto, make_bin: Callable[..., Bin]
) -> None:
    broker.users = {"bin": "correct horse"}
    broker.restart()
    config_file = tmp_path / "recyclex.yaml"
    config_file.write_text(
        f"mqtt:\n  host: 127.0.0.1\n  port: {broker.port}\n  username: bin\n  password: ${{MQTT_PASSWORD}}\n"
        "  reconnect: {min_delay_s: 1, max_delay_s: 1}\n"
    )
    good = load_config(config_file, environ={"MQTT_PASSWORD": "correct horse"}).mqtt
    bad = load_config(config_file, environ={"MQTT_PASSWORD": "wrong"}).mqtt

    refused = make_bin(bad, "bin-refused")
    wait_until(lambda: "refused" in refused.health.snapshot()["mqtt"].detail, "the refusal in mqtt health")
    assert "mqtt.username" in refused.health.snapshot()["mqtt"].detail
    assert "wrong" not in refused.health.snapshot()["mqtt"].detail

    accepted = make_bin(good)
    wait_until(lambda: accepted.bridge.connected, "a connection with the right password")


def test_an_unreachable_broker_costs_almost_no_cpu(make_bin: Callable[..., Bin]) -> None:
    """Offline, the publisher sleeps until something happens; overdue stats or state must not spin it."""
    bin_ = make_bin(mqtt_config(free_port(), stats_interval_s=1.0))  # nothing listens on that port
    submit(bin_.bridge, make_event(0))  # dirty state, never publishable
    started_cpu_s, started_s = time.process_time(), time.monotonic()
    # A measurement over a span of time, not a wait for a condition: the span is the point.
    time.sleep(1.5)
    cpu_share = (time.process_time() - started_cpu_s) / (time.monotonic() - started_s)
    assert cpu_share < 0.2, f"the bridge used {cpu_share:.0%} of a core while offline"
    assert bin_.outbox.depth == 1


def test_the_event_window_honours_the_brokers_receive_maximum(
    broker: Mosquitto, collector: Callable[..., Collector], make_bin: Callable[..., Bin]
) -> None:
    """MQTT 5 Receive Maximum: stricter brokers disconnect a client that exceeds it, and paho does not
    enforce it. Mosquitto announces it but does not enforce it either, so this test looks at the window
    itself (the events handed to paho and not yet acknowledged) while the broker is frozen."""
    broker.extra_config = "max_inflight_messages 6\n"
    broker.restart()
    dashboard = collector(broker, [f"{PREFIX}/events", f"{PREFIX}/state"])
    bin_ = make_bin(mqtt_config(broker.port, max_inflight=50))
    dashboard.wait_for(f"{PREFIX}/state", bool, "the bridge's state")
    broker.pause()
    try:
        ids = [submit(bin_.bridge, make_event(i)) for i in range(40)]
        wait_until(lambda: len(bin_.bridge._inflight) >= 3, "events in flight")
        # Checking that something does not happen needs a span of time: watch the window for a while.
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            assert len(bin_.bridge._inflight) == 3, "6 announced, 3 kept for availability, state, results"
            time.sleep(0.01)
    finally:
        broker.resume()
    events = dashboard.wait_for(f"{PREFIX}/events", lambda got: len(got) >= 40, "all events")
    assert first_seen_ids(events) == ids


def test_events_from_before_a_restart_are_sent_once_a_late_state_volume_mounts(
    broker: Mosquitto, collector: Callable[..., Collector], make_bin: Callable[..., Bin], tmp_path: Path
) -> None:
    # The last run left 3 unsent events on a volume that is not mounted when this run starts.
    staged = tmp_path / "staged-volume"
    earlier = Outbox(staged / "outbox.sqlite3", max_rows=100, max_bytes=1 << 20)
    from_before = []
    for index in range(3):
        event, payload = prepare_event(make_event(index), "bin-test")
        earlier.append(event["id"], payload)
        from_before.append(event["id"])
    earlier.close()
    state = tmp_path / "state"
    state.symlink_to(tmp_path / "volume")

    dashboard = collector(broker, [f"{PREFIX}/events"])
    bin_ = make_bin(mqtt_config(broker.port), state_dir=state, reopen_interval_s=0.2)
    while_unmounted = [submit(bin_.bridge, make_event(i)) for i in range(5)]
    dashboard.wait_for(f"{PREFIX}/events", lambda got: len(got) >= 5, "events from memory")
    assert bin_.health.snapshot()["outbox"].status == Status.FAILING

    staged.rename(tmp_path / "volume")
    wait_until(lambda: bin_.outbox.durable, "the outbox file to open (retried every 0.2 s)")
    after = [submit(bin_.bridge, make_event(i)) for i in range(5)]
    wanted = set(from_before + while_unmounted + after)
    events = dashboard.wait_for(
        f"{PREFIX}/events", lambda got: wanted <= {m.json()["id"] for m in got}, "every event"
    )
    assert first_seen_ids(events) == while_unmounted + from_before + after
    wait_until(lambda: bin_.outbox.depth == 0, "the outbox to empty")
    assert bin_.health.snapshot()["outbox"].status == Status.OK
