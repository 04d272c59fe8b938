"""Commands over a real broker: routing, validation, error results, MQTT 5 request/response. Never a crash."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.mqtt.support import Bin, Collector, Mosquitto, make_event, mqtt_config, submit

PREFIX = "recyclex/bin-test"


def subscribed(dashboard: Collector) -> None:
    """The bridge subscribes before it publishes its state: once the state is here, commands are heard."""
    dashboard.wait_for(f"{PREFIX}/state", bool, "the bridge's state")


def result_of(dashboard: Collector, command: str, count: int = 1) -> dict[str, object]:
    topic = f"{PREFIX}/cmd/{command}/result"
    results = dashboard.wait_for(topic, lambda got: len(got) >= count, f"{count} result(s) of {command}")
    answer: dict[str, object] = results[count - 1].json()
    return answer


@pytest.mark.parametrize(
    ("command", "payload", "error"),
    [
        ("mode", b"{not json", "not valid JSON"),
        ("mode", b"\xff\xfe", "not valid JSON"),
        ("mode", b'["sort"]', "must be a JSON object"),
        ("mode", b'{"mode": "turbo"}', "mode must be one of sort, pass-through, maintenance"),
        ("mode", b"{}", "'mode' needs 'mode'"),
        ("mode", b'{"mode": "sort", "speed": 3}', "unknown argument(s) speed"),
        ("test-actuator", b'{"category": 7}', "category must be a non-empty str"),
        ("test-actuator", b'{"category": "glass", "request_id": 12}', "request_id must be a string"),
        ("self-destruct", b"{}", "unknown command 'self-destruct'"),
        ("snapshot", b"{}", "unknown command 'snapshot'"),  # the daemon gave no handler for it
        ("mode", b"{" + b'"x": 1,' * 5000 + b"}", "over the 16384 byte limit"),
    ],
)
def test_malformed_commands_get_an_error_result(
    broker: Mosquitto,
    collector: Callable[..., Collector],
    make_bin: Callable[..., Bin],
    command: str,
    payload: bytes,
    error: str,
) -> None:
    dashboard = collector(broker, [f"{PREFIX}/cmd/+/result", f"{PREFIX}/events", f"{PREFIX}/state"])
    bin_ = make_bin(mqtt_config(broker.port))
    subscribed(dashboard)
    dashboard.publish(f"{PREFIX}/cmd/{command}", payload)
    answer = result_of(dashboard, command)
    assert answer["ok"] is False
    assert error in str(answer["error"])
    assert bin_.daemon.calls == []
    # ...and the bin goes on publishing events.
    event_id = submit(bin_.bridge, make_event(1))
    dashboard.wait_for(
        f"{PREFIX}/events", lambda got: any(m.json()["id"] == event_id for m in got), "an event"
    )


def test_commands_reach_their_handlers_and_failures_are_reported(
    broker: Mosquitto, collector: Callable[..., Collector], make_bin: Callable[..., Bin]
) -> None:
    dashboard = collector(broker, [f"{PREFIX}/cmd/+/result", f"{PREFIX}/state"])
    bin_ = make_bin(mqtt_config(broker.port))
    subscribed(dashboard)

    dashboard.publish(f"{PREFIX}/cmd/mode", b'{"mode": "maintenance", "request_id": "r-1"}')
    assert result_of(dashboard, "mode") == {
        "command": "mode",
        "ok": True,
        "result": {"mode": "maintenance"},
        "request_id": "r-1",
        "ts": result_of(dashboard, "mode")["ts"],
    }
    assert bin_.daemon.mode == "maintenance"
    dashboard.wait_for(
        f"{PREFIX}/state",
        lambda got: got[-1].json()["mode"] == "maintenance",
        "the state to show the new mode",
    )

    dashboard.publish(f"{PREFIX}/cmd/test-actuator", b'{"category": "metal"}')
    answer = result_of(dashboard, "test-actuator")
    assert (
        answer["ok"] is False
        and "KeyError" in str(answer["error"])
        and "no bin for metal" in str(answer["error"])
    )

    dashboard.publish(f"{PREFIX}/cmd/reload-model", b"")  # empty payload: no arguments
    answer = result_of(dashboard, "reload-model")
    assert answer == {
        **answer,
        "ok": False,
        "error": "reload-model failed: RuntimeError: interpreter exploded",
    }

    # The handler thread survived the exception: the next command still runs.
    dashboard.publish(f"{PREFIX}/cmd/reset-counters", b"{}")
    assert result_of(dashboard, "reset-counters")["ok"] is True
    assert [name for name, _ in bin_.daemon.calls] == ["mode", "test-actuator", "reset-counters"]


def test_a_retained_command_is_refused_not_replayed(
    broker: Mosquitto, collector: Callable[..., Collector], make_bin: Callable[..., Bin]
) -> None:
    dashboard = collector(broker, [f"{PREFIX}/cmd/+/result"])
    dashboard.publish(f"{PREFIX}/cmd/reset-counters", b"{}", retain=True)
    bin_ = make_bin(mqtt_config(broker.port))
    answer = result_of(dashboard, "reset-counters")
    assert answer["ok"] is False and "retained" in str(answer["error"])
    assert bin_.daemon.calls == []


def test_mqtt5_response_topic_and_correlation_data_are_honoured(
    broker: Mosquitto, collector: Callable[..., Collector], make_bin: Callable[..., Bin]
) -> None:
    dashboard = collector(
        broker, ["dashboards/42/replies", f"{PREFIX}/cmd/+/result", f"{PREFIX}/state"], protocol="5"
    )
    bin_ = make_bin(mqtt_config(broker.port, protocol="5"))
    subscribed(dashboard)
    for correlation, payload in [(b"req-ok", b'{"mode": "pass-through"}'), (b"req-bad", b"{oops")]:
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ResponseTopic = "dashboards/42/replies"
        properties.CorrelationData = correlation
        dashboard.publish(f"{PREFIX}/cmd/mode", payload, properties=properties)
    replies = dashboard.wait_for("dashboards/42/replies", lambda got: len(got) >= 2, "two replies")
    by_correlation = {reply.properties.CorrelationData: reply.json() for reply in replies}
    assert by_correlation[b"req-ok"]["ok"] is True
    assert by_correlation[b"req-bad"]["ok"] is False
    assert bin_.daemon.mode == "pass-through"
    assert dashboard.on(f"{PREFIX}/cmd/mode/result") == [], "answered on the response topic only"
